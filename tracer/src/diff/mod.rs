//! `cfstrace diff`: two finished reports compared (before and after a kernel upgrade, a quota
//! change, a fix). Pure: reads two [`Report`]s, never a capture, a kernel or a terminal.
//!
//! - `matching`: which cgroup of one side is which of the other (by path, else by workload
//!   identity), and how each pair was matched;
//! - this file: the `cfstrace.diff/1` document, each figure side by side with its change, and
//!   the noise rule and verdicts.
//!
//! The noise rule (README, `diff`): a figure changed only when the change is at least the
//! larger of `--noise PCT` % of the before value, the figure's quantile resolution (1/128 of
//! the value for callback-time quantiles, hdrhistogram at 2 significant digits; 1/16 for
//! per-period counts at 1), and its floor (1 us for times, 1 for counts). The verdict is
//! decided by the first figure, in [`VERDICT_ORDER`], that changed; figures that moved the
//! other way are named in `why`.
use serde::Serialize;

use crate::model::probe::Style;
use crate::model::workload::Workload;
use crate::report::{CgroupReport, Report, decimals_against, human_ns};

mod matching;
#[cfg(test)]
mod tests;

pub use matching::{MatchBy, match_cgroups};

pub const DIFF_SCHEMA: &str = "cfstrace.diff/1";

/// `--noise` when not given: a change under 10 % of the before value is "unchanged".
pub const DEFAULT_NOISE_PCT: f64 = 10.0;

/// Times closer than this are the same: timer-interrupt entry jitter, not a change.
pub const TIME_FLOOR_NS: f64 = 1_000.0;

/// Relative resolution of a callback-time quantile (hdrhistogram, 2 significant digits).
const TIME_QUANTILE_RESOLUTION: f64 = 1.0 / 128.0;
/// Relative resolution of a per-period count quantile (1 significant digit).
const COUNT_QUANTILE_RESOLUTION: f64 = 1.0 / 16.0;

/// A figure compared. Declared in display order.
#[derive(Serialize, Clone, Copy, Debug, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum FigureName {
    /// The longest IRQs-off time: the worst timer-interrupt span (or callback where spans
    /// are not traced) — what the watchdog sees.
    WorstSpan,
    /// watchdog_thresh minus the worst span, % of watchdog_thresh (follows `worst_span`).
    Headroom,
    CallbackP50,
    CallbackP99,
    CallbackMax,
    UnthrottledP50,
    UnthrottledMax,
    /// CPUs unthrottled on in the worst period.
    SpreadMax,
    /// Period changes + callbacks over their period + multi-pass callbacks.
    Precursors,
    /// Events lost (node only).
    Lost,
}

/// The figures that decide a verdict, most telling first; the first that changed decides.
pub const VERDICT_ORDER: [FigureName; 5] = [
    FigureName::WorstSpan,
    FigureName::Precursors,
    FigureName::CallbackMax,
    FigureName::CallbackP99,
    FigureName::CallbackP50,
];

impl FigureName {
    /// How the text table labels it.
    pub fn label(self) -> &'static str {
        match self {
            FigureName::WorstSpan => "worst span",
            FigureName::Headroom => "headroom",
            FigureName::CallbackP50 => "callback p50",
            FigureName::CallbackP99 => "callback p99",
            FigureName::CallbackMax => "callback max",
            FigureName::UnthrottledP50 => "unthrottled p50",
            FigureName::UnthrottledMax => "unthrottled max",
            FigureName::SpreadMax => "spread max",
            FigureName::Precursors => "precursors",
            FigureName::Lost => "lost events",
        }
    }

    pub fn unit(self) -> Unit {
        match self {
            FigureName::WorstSpan
            | FigureName::CallbackP50
            | FigureName::CallbackP99
            | FigureName::CallbackMax => Unit::Ns,
            FigureName::Headroom => Unit::Pct,
            _ => Unit::Count,
        }
    }

    /// Relative resolution of the figure itself (0: exact).
    fn resolution(self) -> f64 {
        match self {
            FigureName::CallbackP50 | FigureName::CallbackP99 => TIME_QUANTILE_RESOLUTION,
            FigureName::UnthrottledP50 => COUNT_QUANTILE_RESOLUTION,
            _ => 0.0,
        }
    }

    fn judged(self) -> bool {
        VERDICT_ORDER.contains(&self)
    }
}

#[derive(Serialize, Clone, Copy, Debug, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum Unit {
    /// Nanoseconds.
    Ns,
    /// A count.
    Count,
    /// Percent of watchdog_thresh; its `change` is in percentage points.
    Pct,
}

/// Which way a figure moved, by the noise rule. Every figure here is better lower, but
/// headroom, judged by the part of it used (the worst span).
#[derive(Serialize, Clone, Copy, Debug, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum Trend {
    Better,
    Worse,
    Unchanged,
}

#[derive(Serialize, Clone, Copy, Debug, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum VerdictKind {
    Better,
    Worse,
    Unchanged,
    /// No deciding figure has a value on both sides.
    NotComparable,
}

impl VerdictKind {
    pub fn as_str(self) -> &'static str {
        match self {
            VerdictKind::Better => "better",
            VerdictKind::Worse => "worse",
            VerdictKind::Unchanged => "unchanged",
            VerdictKind::NotComparable => "not comparable",
        }
    }
}

/// One figure on both sides.
#[derive(Serialize, Clone, Debug, PartialEq)]
pub struct FigureDiff {
    pub figure: FigureName,
    pub unit: Unit,
    pub before: Option<f64>,
    pub after: Option<f64>,
    /// after - before (percentage points for `pct`).
    pub change: Option<f64>,
    /// The change as % of the before value; None when before is 0 or a side is missing.
    pub change_pct: Option<f64>,
    /// None when a side is missing.
    pub trend: Option<Trend>,
    /// It takes part in the verdict ([`VERDICT_ORDER`]).
    pub judged: bool,
    /// Why a side has no value (the report's own reason where it gives one).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub before_missing: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub after_missing: Option<String>,
}

/// A figure's value, or why there is none.
type Value = Result<f64, String>;

impl FigureDiff {
    fn new(figure: FigureName, before: Value, after: Value, noise_pct: f64) -> FigureDiff {
        let (b, a) = (before.as_ref().ok().copied(), after.as_ref().ok().copied());
        let both = b.zip(a);
        FigureDiff {
            figure,
            unit: figure.unit(),
            before: b,
            after: a,
            change: both.map(|(b, a)| a - b),
            change_pct: both
                .filter(|(b, _)| *b != 0.0)
                .map(|(b, a)| (a - b) * 100.0 / b.abs()),
            trend: both.map(|(b, a)| trend(figure, b, a, noise_pct)),
            judged: figure.judged(),
            before_missing: before.err(),
            after_missing: after.err(),
        }
    }
}

/// The noise rule (module docs). Headroom is judged by what is used of it (100 - pct), so it
/// moves with the worst span.
pub fn trend(figure: FigureName, before: f64, after: f64, noise_pct: f64) -> Trend {
    let (b, a) = match figure.unit() {
        Unit::Pct => (100.0 - before, 100.0 - after),
        _ => (before, after),
    };
    let floor = match figure.unit() {
        Unit::Ns => TIME_FLOOR_NS,
        Unit::Count => 1.0,
        // A headroom's used part is the worst span over watchdog_thresh: no floor of its own.
        Unit::Pct => 0.0,
    };
    let threshold = (noise_pct / 100.0 * b.abs())
        .max(figure.resolution() * b.abs().max(a.abs()))
        .max(floor);
    let d = a - b;
    if d.abs() < threshold || d == 0.0 {
        Trend::Unchanged
    } else if d < 0.0 {
        Trend::Better
    } else {
        Trend::Worse
    }
}

/// A verdict and the figure that decided it.
#[derive(Serialize, Clone, Debug, PartialEq)]
pub struct Verdict {
    pub verdict: VerdictKind,
    /// The deciding figure: the first in [`VERDICT_ORDER`] that changed (for `unchanged`, the
    /// first with both sides); None when not comparable.
    pub figure: Option<FigureName>,
    /// One line: `worst span 1.20 ms -> 310 us (-74%)`, and figures that moved the other way.
    pub why: String,
}

impl Verdict {
    /// The verdict of a set of figures (the rule in the module docs).
    pub fn of(figures: &[FigureDiff]) -> Verdict {
        let judged = || {
            VERDICT_ORDER
                .iter()
                .filter_map(|n| figures.iter().find(|f| f.figure == *n))
        };
        let decided = judged().find(|f| matches!(f.trend, Some(Trend::Better | Trend::Worse)));
        if let Some(d) = decided {
            let t = d.trend.expect("decided has a trend");
            let against: Vec<&str> = judged()
                .filter(|f| f.trend.is_some_and(|o| o != t && o != Trend::Unchanged))
                .map(|f| f.figure.label())
                .collect();
            let mut why = movement(d);
            if !against.is_empty() {
                let other = if t == Trend::Better {
                    "worse"
                } else {
                    "better"
                };
                why.push_str(&format!("; but {other}: {}", against.join(", ")));
            }
            let verdict = if t == Trend::Better {
                VerdictKind::Better
            } else {
                VerdictKind::Worse
            };
            return Verdict {
                verdict,
                figure: Some(d.figure),
                why,
            };
        }
        match judged().find(|f| f.trend.is_some()) {
            Some(f) => Verdict {
                verdict: VerdictKind::Unchanged,
                figure: Some(f.figure),
                why: format!("{} (within the noise rule)", movement(f)),
            },
            None => {
                let missing = judged()
                    .next()
                    .and_then(|f| f.before_missing.as_ref().or(f.after_missing.as_ref()))
                    .map_or_else(String::new, |r| format!(": {r}"));
                Verdict {
                    verdict: VerdictKind::NotComparable,
                    figure: None,
                    why: format!("no deciding figure on both sides{missing}"),
                }
            }
        }
    }
}

/// `worst span 1.20 ms -> 310 us (-74%)`.
pub fn movement(f: &FigureDiff) -> String {
    let pct = f
        .change_pct
        .map_or_else(String::new, |p| format!(" ({})", signed_pct(p)));
    format!(
        "{} {} -> {}{pct}",
        f.figure.label(),
        value_text(f.unit, f.before),
        value_text(f.unit, f.after)
    )
}

/// A value in its unit, `-` when missing: `310 us`, `12`, `99.9969%`.
pub fn value_text(unit: Unit, v: Option<f64>) -> String {
    let Some(v) = v else {
        return "-".to_string();
    };
    match unit {
        Unit::Ns => human_ns(v.max(0.0) as u64),
        Unit::Count => count_text(v),
        Unit::Pct => format!("{}%", decimals_against(v, 4, &[100.0])),
    }
}

/// A change in its unit with its sign: `+1.20 ms`, `-3`, `-0.0021pt`.
pub fn change_text(unit: Unit, d: Option<f64>) -> String {
    let Some(d) = d else {
        return "-".to_string();
    };
    let sign = if d < 0.0 {
        "-"
    } else if d > 0.0 {
        "+"
    } else {
        ""
    };
    let m = d.abs();
    match unit {
        Unit::Ns => format!("{sign}{}", human_ns(m as u64)),
        Unit::Count => format!("{sign}{}", count_text(m)),
        Unit::Pct => format!("{sign}{}pt", decimals_against(m, 4, &[])),
    }
}

/// `-74%`, `+1.3%`, `+250%`.
pub fn signed_pct(p: f64) -> String {
    if p == 0.0 {
        return "0%".to_string();
    }
    let digits = if p.abs() >= 10.0 { 0 } else { 1 };
    format!("{}{p:.digits$}%", if p > 0.0 { "+" } else { "" })
}

fn count_text(v: f64) -> String {
    if v.fract() == 0.0 {
        format!("{v:.0}")
    } else {
        format!("{v:.1}")
    }
}

/// One capture's side of the comparison: what its header said.
#[derive(Serialize, Clone, Debug, PartialEq)]
pub struct Side {
    /// The capture file as given.
    pub file: String,
    pub hostname: String,
    pub kernel: String,
    pub ncpus: u32,
    pub watchdog_thresh_s: Option<u64>,
    pub backend: Style,
    pub duration_s: f64,
    pub periods: u64,
    pub lost: u64,
}

impl Side {
    fn of(file: &str, r: &Report) -> Side {
        Side {
            file: file.to_string(),
            hostname: r.hostname.clone(),
            kernel: r.kernel.clone(),
            ncpus: r.ncpus,
            watchdog_thresh_s: r.watchdog.thresh_s,
            backend: r.backend,
            duration_s: r.duration_s,
            periods: r.events.periods,
            lost: r.events.lost,
        }
    }
}

/// The node: how the two headers match, its figures and its verdict.
#[derive(Serialize, Clone, Debug, PartialEq)]
pub struct NodeDiff {
    pub same_host: bool,
    pub same_kernel: bool,
    pub same_ncpus: bool,
    pub same_watchdog: bool,
    pub figures: Vec<FigureDiff>,
    pub verdict: Verdict,
}

/// A cgroup as one side names it.
#[derive(Serialize, Clone, Debug, PartialEq)]
pub struct CgroupRef {
    pub id: u64,
    pub path: Option<String>,
    /// The display name (the path, or what stands for a cgroup never named).
    pub name: String,
    pub workload: Workload,
}

impl CgroupRef {
    fn of(c: &CgroupReport) -> CgroupRef {
        CgroupRef {
            id: c.id,
            path: c.path.clone(),
            name: c.name().into_owned(),
            workload: c.workload.clone(),
        }
    }
}

/// A matched pair of cgroups.
#[derive(Serialize, Clone, Debug, PartialEq)]
pub struct CgroupDiff {
    pub before: CgroupRef,
    pub after: CgroupRef,
    pub matched_by: MatchBy,
    pub figures: Vec<FigureDiff>,
    pub verdict: Verdict,
}

/// The `cfstrace.diff/1` document.
#[derive(Serialize, Clone, Debug, PartialEq)]
pub struct Diff {
    pub schema: &'static str,
    pub tool_version: &'static str,
    /// The noise rule's relative part (`--noise`).
    pub noise_pct: f64,
    pub before: Side,
    pub after: Side,
    pub node: NodeDiff,
    /// Matched pairs, in the before report's order (most IRQs-off time first).
    pub cgroups: Vec<CgroupDiff>,
    pub only_before: Vec<CgroupRef>,
    pub only_after: Vec<CgroupRef>,
}

impl Diff {
    /// The worst verdict of the node and every matched cgroup is `worse`.
    pub fn any_worse(&self) -> bool {
        std::iter::once(&self.node.verdict)
            .chain(self.cgroups.iter().map(|c| &c.verdict))
            .any(|v| v.verdict == VerdictKind::Worse)
    }
}

/// Compare two reports; `files` name the captures they came from.
pub fn diff(before: &Report, after: &Report, files: (&str, &str), noise_pct: f64) -> Diff {
    let m = match_cgroups(&before.cgroups, &after.cgroups);
    let cgroups = m
        .pairs
        .iter()
        .map(|&(i, j, by)| {
            let (b, a) = (&before.cgroups[i], &after.cgroups[j]);
            let figures = cgroup_figures(before, b, after, a, noise_pct);
            CgroupDiff {
                before: CgroupRef::of(b),
                after: CgroupRef::of(a),
                matched_by: by,
                verdict: Verdict::of(&figures),
                figures,
            }
        })
        .collect();
    let figures = node_figures(before, after, noise_pct);
    Diff {
        schema: DIFF_SCHEMA,
        tool_version: env!("CARGO_PKG_VERSION"),
        noise_pct,
        before: Side::of(files.0, before),
        after: Side::of(files.1, after),
        node: NodeDiff {
            same_host: before.hostname == after.hostname,
            same_kernel: before.kernel == after.kernel,
            same_ncpus: before.ncpus == after.ncpus,
            same_watchdog: before.watchdog.thresh_s == after.watchdog.thresh_s
                && before.watchdog.enabled == after.watchdog.enabled,
            verdict: Verdict::of(&figures),
            figures,
        },
        cgroups,
        only_before: m
            .only_before
            .iter()
            .map(|&i| CgroupRef::of(&before.cgroups[i]))
            .collect(),
        only_after: m
            .only_after
            .iter()
            .map(|&j| CgroupRef::of(&after.cgroups[j]))
            .collect(),
    }
}

/// Why a report has no value for a figure: its own reason when it gives one.
fn unavailable(f: &crate::report::Figure, what: &str) -> String {
    match (&f.reason, f.available) {
        (Some(r), _) => format!("{what} unavailable: {r}"),
        (None, false) => format!("{what} unavailable on this run"),
        (None, true) => format!("no {what} measured for it"),
    }
}

fn headroom_value(r: &Report, h: Option<i64>) -> Value {
    crate::analysis::headroom::headroom_pct(r.watchdog.thresh_s, h)
}

/// The per-cgroup figures of `b` (in `rb`) and `a` (in `ra`).
fn cgroup_figures(
    rb: &Report,
    b: &CgroupReport,
    ra: &Report,
    a: &CgroupReport,
    noise_pct: f64,
) -> Vec<FigureDiff> {
    type Get = fn(&Report, &CgroupReport) -> Value;
    let no_callbacks = |c: &CgroupReport| -> Result<(), String> {
        if c.periods == 0 || c.callback_ns.count == 0 {
            Err("no period-timer callback of its own".to_string())
        } else {
            Ok(())
        }
    };
    let table: [(FigureName, Get); 9] = [
        (FigureName::WorstSpan, |_, c| {
            Ok(c.worst_irqs_off_ns() as f64)
        }),
        (FigureName::Headroom, |r, c| {
            headroom_value(r, c.headroom_ns)
        }),
        (FigureName::CallbackP50, |_, c| Ok(c.callback_ns.p50 as f64)),
        (FigureName::CallbackP99, |_, c| Ok(c.callback_ns.p99 as f64)),
        (FigureName::CallbackMax, |_, c| Ok(c.callback_ns.max as f64)),
        (FigureName::UnthrottledP50, |r, c| {
            c.unthrottled_per_period
                .map(|s| s.p50 as f64)
                .ok_or_else(|| unavailable(&r.figures.unthrottled, "unthrottled"))
        }),
        (FigureName::UnthrottledMax, |r, c| {
            c.unthrottled_per_period
                .map(|s| s.max as f64)
                .ok_or_else(|| unavailable(&r.figures.unthrottled, "unthrottled"))
        }),
        (FigureName::SpreadMax, |r, c| {
            c.spread
                .as_ref()
                .map(|s| s.per_period.max as f64)
                .ok_or_else(|| unavailable(&r.figures.spread, "spread"))
        }),
        (FigureName::Precursors, |_, c| {
            c.precursors
                .as_ref()
                .map(|p| {
                    (p.period_changes.len() as u64
                        + p.period_changes_dropped
                        + p.callbacks_over_period
                        + p.multi_pass_callbacks.unwrap_or(0)) as f64
                })
                .ok_or_else(|| "no precursors read (no callbacks)".to_string())
        }),
    ];
    table
        .iter()
        .map(|(name, get)| {
            let side = |r: &Report, c: &CgroupReport| no_callbacks(c).and_then(|()| get(r, c));
            FigureDiff::new(*name, side(rb, b), side(ra, a), noise_pct)
        })
        .collect()
}

/// The node's figures: its worst IRQs-off span and headroom, the worst callback of any
/// cgroup, the precursor totals and the events lost.
fn node_figures(b: &Report, a: &Report, noise_pct: f64) -> Vec<FigureDiff> {
    let none = || "no period-timer callback was seen".to_string();
    let worst = |r: &Report| -> Value {
        r.worst_irqs_off
            .as_ref()
            .map(|w| w.duration_ns as f64)
            .ok_or_else(none)
    };
    let headroom = |r: &Report| headroom_value(r, r.headroom_ns);
    let callback_max = |r: &Report| -> Value {
        r.cgroups
            .iter()
            .filter(|c| c.callback_ns.count > 0)
            .map(|c| c.callback_ns.max)
            .max()
            .map(|m| m as f64)
            .ok_or_else(none)
    };
    let precursors = |r: &Report| -> Value {
        r.precursors
            .as_ref()
            .map(|p| {
                (p.period_changes + p.callbacks_over_period + p.multi_pass_callbacks.unwrap_or(0))
                    as f64
            })
            .ok_or_else(|| "no precursors in this report (older cfstrace)".to_string())
    };
    let lost = |r: &Report| -> Value { Ok(r.events.lost as f64) };
    type Get<'a> = &'a dyn Fn(&Report) -> Value;
    let table: [(FigureName, Get); 5] = [
        (FigureName::WorstSpan, &worst),
        (FigureName::Headroom, &headroom),
        (FigureName::CallbackMax, &callback_max),
        (FigureName::Precursors, &precursors),
        (FigureName::Lost, &lost),
    ];
    table
        .iter()
        .map(|(n, get)| FigureDiff::new(*n, get(b), get(a), noise_pct))
        .collect()
}
