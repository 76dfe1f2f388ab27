//! The report: the `cfstrace.report/1` JSON document and its terminal rendering.
//!
//! Built from an [`Aggregator`] (a replayed capture or a `watch` interval) and the capture
//! header's facts. The question it answers: which cgroup's period timer holds IRQs off the
//! longest, and how much of the hard-lockup watchdog's headroom is left.
use std::collections::{BTreeMap, HashMap};
use std::fmt::Write as _;
use std::path::Path;

use serde::{Deserialize, Serialize};
use tracer_ebpf::{
    ASYNC_LISTED, HOW_ENQUEUE_ENTITY, HOW_ENQUEUE_TASK_FAIR, HOW_LOOPS, HOW_QUEUED, HOW_RUNNABLE,
    HOW_SPREAD, HOW_UNTHROTTLE,
};

use crate::analysis::aggregate::{
    Aggregator, AsyncStats, CgroupSpan, CgroupView, Distribution, PeriodChange, SPREAD_FROM_CSD,
    SPREAD_FROM_PROBE, SPREAD_FROM_TIMER_CPU, SpreadStats, UNRESOLVED_ID, UNRESOLVED_NAME,
};
use crate::capture::{
    self, CaptureError, CaptureHeader, ParentRecord, PeriodScaling, ProbeStatus, ProcessInfo,
};
use crate::model::host::WatchdogFacts;
use crate::model::probe::{Backend, Probe, Style};
use crate::model::workload::{Workload, WorkloadKind};

pub const REPORT_SCHEMA: &str = "cfstrace.report/1";

/// `--highlight-under` when not given: headroom under 10 % of watchdog_thresh is highlighted.
pub const DEFAULT_HIGHLIGHT_PCT: f64 = 10.0;

#[derive(Debug, thiserror::Error)]
pub enum ReportError {
    #[error(transparent)]
    Capture(#[from] CaptureError),
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct Report {
    pub schema: String,
    pub tool_version: String,
    pub hostname: String,
    pub kernel: String,
    pub ncpus: u32,
    /// What the period-timer frame used.
    pub backend: Style,
    pub backend_requested: Backend,
    /// Probe name -> how it was attached, or why not.
    pub probes: BTreeMap<Probe, ProbeStatus>,
    pub watchdog: WatchdogFacts,
    pub duration_s: f64,
    pub events: Events,
    pub figures: Figures,
    /// Worst first (by total IRQs-off callback time).
    pub cgroups: Vec<CgroupReport>,
    /// CPUs that ran at least one period timer, ascending.
    pub cpus: Vec<CpuReport>,
    /// Node: watchdog_thresh - the worst IRQs-off span seen: a timer interrupt that ran period
    /// timers where those are traced, else the worst single callback; the worst async CSD
    /// counts too (`headroom_basis` says which). None without callbacks or thresh.
    pub headroom_ns: Option<i64>,
    /// What `headroom_ns` is measured from: `irq_span`, `period_callback` or `async_csd`.
    #[serde(default)]
    pub headroom_basis: Option<String>,
    /// The worst IRQs-off span behind `headroom_ns`.
    #[serde(default)]
    pub worst_irqs_off: Option<WorstIrqsOff>,
    /// The node's headroom against the highlight threshold (`--highlight-under`, default 10 %
    /// of watchdog_thresh). None only in a report from before it existed.
    #[serde(default)]
    pub headroom_alert: Option<HeadroomAlert>,
    /// Lockup precursors over all cgroups (kernel period rescaling, callbacks over their
    /// period, several distribute passes, the kernel's own messages).
    #[serde(default)]
    pub precursors: Option<NodePrecursors>,
    pub culprit: Option<Culprit>,
    #[serde(default)]
    pub warnings: Vec<String>,
}

/// Whether the node's headroom fell below the highlight threshold.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct HeadroomAlert {
    /// The threshold, % of watchdog_thresh (`--highlight-under`).
    pub under_pct: f64,
    /// `headroom_ns` as % of watchdog_thresh (to 6 decimals): the figure `--fail-under` judges.
    /// None when it cannot be judged (`reason`).
    pub headroom_pct: Option<f64>,
    /// The headroom is below `under_pct`.
    pub alert: bool,
    /// Why `headroom_pct` is None.
    #[serde(default)]
    pub reason: Option<String>,
}

/// Judge the report's node headroom against `under_pct` % of watchdog_thresh, with the same
/// figure `--fail-under` uses ([`crate::analysis::headroom::headroom_pct`]).
pub fn headroom_alert(report: &Report, under_pct: f64) -> HeadroomAlert {
    match crate::analysis::headroom::headroom_pct(report) {
        Ok(pct) => HeadroomAlert {
            under_pct,
            headroom_pct: Some((pct * 1e6).round() / 1e6),
            alert: pct < under_pct,
            reason: None,
        },
        Err(why) => HeadroomAlert {
            under_pct,
            headroom_pct: None,
            alert: false,
            reason: Some(why),
        },
    }
}

impl Report {
    /// Highlight headroom under `under_pct` % of watchdog_thresh (`--highlight-under`): sets
    /// `headroom_alert`, which the text rendering follows too.
    pub fn set_highlight_under(&mut self, under_pct: f64) {
        self.headroom_alert = Some(headroom_alert(self, under_pct));
    }

    /// The highlight threshold in effect (% of watchdog_thresh).
    pub fn highlight_under(&self) -> f64 {
        self.headroom_alert
            .as_ref()
            .map_or(DEFAULT_HIGHLIGHT_PCT, |a| a.under_pct)
    }
}

#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct Events {
    /// Period-timer callbacks in the report.
    pub periods: u64,
    /// Events lost outright.
    pub lost: u64,
    pub ringbuf_full: u64,
    pub unmatched_exit: u64,
    pub missed_exit: u64,
    pub cgroup_read: u64,
    /// Async-unthrottle events (one per cgroup per CSD) in the report.
    #[serde(default)]
    pub async_unthrottle: u64,
    /// Async-unthrottle CSDs (whole ones) in the report.
    #[serde(default)]
    pub async_csds: u64,
    /// Of those, CSDs that found nothing left to unthrottle.
    #[serde(default)]
    pub async_empty: u64,
    #[serde(default)]
    pub csd_unmatched_exit: u64,
    #[serde(default)]
    pub csd_missed_exit: u64,
    /// Timer interrupts that ran at least one period timer (the others are not recorded).
    #[serde(default)]
    pub irq_spans: u64,
    /// Callbacks that ran inside a traced timer-interrupt span.
    #[serde(default)]
    pub periods_in_span: u64,
    #[serde(default)]
    pub span_unmatched_exit: u64,
    #[serde(default)]
    pub span_missed_exit: u64,
    /// Callbacks whose events were lost but which the kernel's own sums count (included in
    /// each cgroup's `periods`, `callback_ns` count/mean/max and IRQs-off total).
    #[serde(default)]
    pub periods_unsent: u64,
    /// Lost callbacks the kernel's sums had no room for either.
    #[serde(default)]
    pub unsent_full: u64,
}

/// Whether a figure was measured on this run, how, or why not.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Default)]
pub struct Figure {
    pub available: bool,
    /// e.g. `kprobe unthrottle_cfs_rq`.
    pub how: Option<String>,
    /// Why it is unavailable (or degraded).
    pub reason: Option<String>,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct Figures {
    pub callback_ns: Figure,
    pub loops: Figure,
    pub unthrottled: Figure,
    pub enqueued: Figure,
    pub runnable: Figure,
    /// Tasks queued under the cfs_rqs each period unthrottled: `cfs_rq.h_nr_queued`
    /// (`h_nr_running` before 6.14) read at each `unthrottle_cfs_rq`.
    #[serde(default)]
    pub queued: Figure,
    /// Work the period timer moved to CSDs on other CPUs (6.3+).
    #[serde(default)]
    pub async_unthrottle: Figure,
    /// Whole timer-interrupt spans around the callbacks.
    #[serde(default)]
    pub irq_span: Figure,
    /// Per-period CPU spread (`cgroups[].spread`).
    #[serde(default)]
    pub spread: Figure,
    /// The kernel's "period too short" messages (/dev/kmsg).
    #[serde(default)]
    pub kernel_messages: Figure,
}

#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq)]
pub struct Stats {
    pub count: u64,
    pub min: u64,
    pub p50: u64,
    pub p90: u64,
    pub p99: u64,
    pub max: u64,
    pub mean: f64,
}

impl Stats {
    pub fn of(d: &Distribution) -> Stats {
        Stats {
            count: d.count(),
            min: d.min(),
            p50: d.quantile(0.50),
            p90: d.quantile(0.90),
            p99: d.quantile(0.99),
            max: d.max(),
            mean: d.mean(),
        }
    }
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct CgroupReport {
    /// kernfs id (= inode of the cgroup's directory); 0 is callbacks whose cgroup was not read.
    pub id: u64,
    pub path: Option<String>,
    pub workload: Workload,
    pub processes: Vec<ProcessInfo>,
    /// From cpu.max / cpu.cfs_period_us when the cgroup was named.
    pub period_us: Option<u64>,
    /// None: no quota, or not named.
    pub quota_us: Option<u64>,
    /// Its ancestors, nearest first, up to (excluding) the hierarchy's root, each with its own
    /// `period_us`/`quota_us` (null: no quota). Empty for a top-level cgroup; null when not
    /// resolved (never named, or an older capture).
    #[serde(default)]
    pub parents: Option<Vec<ParentRecord>>,
    pub periods: u64,
    pub total_callback_ns: u64,
    pub callback_ns: Stats,
    pub unthrottled_per_period: Option<Stats>,
    pub enqueued_per_period: Option<Stats>,
    /// Tasks queued under the cfs_rqs it unthrottled, per period (`figures.queued`).
    #[serde(default)]
    pub queued_per_period: Option<Stats>,
    pub runnable_per_period: Option<Stats>,
    pub max_loops: Option<u32>,
    /// CPUs its period timer fired on.
    pub cpus: Vec<u32>,
    /// watchdog_thresh - the longest timer-interrupt span that ran one of its callbacks, or
    /// its worst callback where spans are not traced (`headroom_basis`).
    pub headroom_ns: Option<i64>,
    /// `irq_span` or `period_callback`.
    #[serde(default)]
    pub headroom_basis: Option<String>,
    /// The longest timer-interrupt span that ran one of its callbacks, and its share of it.
    #[serde(default)]
    pub worst_irq_span: Option<SpanShare>,
    /// `cfs_bandwidth.period` as the kernel had it (it rescales a too-short period itself).
    #[serde(default)]
    pub kernel_period_us: Option<u64>,
    /// `cfs_bandwidth.quota` as the kernel had it (None: no quota or not read).
    #[serde(default)]
    pub kernel_quota_us: Option<u64>,
    #[serde(default)]
    pub note: Option<String>,
    /// Its cfs_rqs unthrottled asynchronously, in CSDs on their own CPUs (6.3+); None when
    /// none were seen or the figure is unavailable.
    #[serde(default)]
    pub async_unthrottle: Option<AsyncReport>,
    /// On how many CPUs its cfs_rqs were unthrottled per period; None when unavailable
    /// (`figures.spread` says why) or it had no callback.
    #[serde(default)]
    pub spread: Option<SpreadReport>,
    /// Lockup precursors of its timer; None for a cgroup without callbacks.
    #[serde(default)]
    pub precursors: Option<PrecursorReport>,
}

/// A cgroup's throttling spread, the way `crash> runq -g` would have shown it.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct SpreadReport {
    /// Distinct CPUs whose cfs_rqs were unthrottled, per period (callback to next callback).
    pub per_period: Stats,
    /// Every such CPU over the run, ascending.
    pub cpus: Vec<u32>,
    /// `cpus.len()`.
    pub ncpus: u32,
    /// e.g. `throttled on 46 of 48 CPUs in one period (typically 40; 47 over the run)`.
    pub summary: String,
    /// What the CPUs come from: `unthrottle_cfs_rq` (the callback's own unthrottles, each
    /// cfs_rq's CPU read), `async_csd` (the CPUs of the CSDs that unthrottled it later, 6.3+),
    /// `timer_cpu` (the timer's CPU when its callback made tasks runnable).
    pub sources: Vec<String>,
    /// Unthrottles on CPUs beyond the 1024-CPU bitmap (not in the figures).
    #[serde(default)]
    pub overflow: u64,
}

/// What the kernel's own lockup fix (2e8e19226398) reacts to, for one cgroup's timer.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
pub struct PrecursorReport {
    /// `cfs_bandwidth.period` changes between two callbacks.
    pub period_changes: Vec<PeriodChangeReport>,
    /// Changes not listed (beyond the per-cgroup cap).
    #[serde(default)]
    pub period_changes_dropped: u64,
    /// Callbacks that took at least their own period.
    pub callbacks_over_period: u64,
    /// Callbacks with more than one `distribute_cfs_runtime` pass (None where the loop count
    /// is unavailable).
    pub multi_pass_callbacks: Option<u64>,
    /// The kernel's "period too short" messages attributed to this cgroup.
    pub kernel_messages: Vec<PeriodScaling>,
}

impl PrecursorReport {
    pub fn any(&self) -> bool {
        !self.period_changes.is_empty()
            || self.callbacks_over_period > 0
            || self.multi_pass_callbacks.is_some_and(|n| n > 0)
            || !self.kernel_messages.is_empty()
    }
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct PeriodChangeReport {
    /// The first callback with the new period.
    pub ts_ns: u64,
    pub cpu: u32,
    pub from_us: u64,
    pub to_us: u64,
    pub from_quota_us: Option<u64>,
    pub to_quota_us: Option<u64>,
    /// `kernel` (a "period too short, scaling up" message with this new period), `write`
    /// (no such message; the cgroup file shows the new period), `unknown`.
    pub by: String,
    /// Why `by` says what it says.
    pub evidence: String,
}

/// Node-level precursor summary.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
pub struct NodePrecursors {
    pub period_changes: u64,
    pub period_changes_by_kernel: u64,
    pub period_changes_by_write: u64,
    pub callbacks_over_period: u64,
    pub multi_pass_callbacks: Option<u64>,
    /// Every "period too short" message seen while recording.
    pub kernel_messages: u64,
    /// Messages no cgroup could be matched to.
    pub unattributed_messages: Vec<PeriodScaling>,
    /// Cgroups with at least one precursor, worst first.
    pub cgroups: Vec<u64>,
}

/// A cgroup's async-unthrottle work: what its period timer queued to other CPUs.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct AsyncReport {
    /// CSDs that unthrottled some of its cfs_rqs.
    pub csds: u64,
    /// cfs_rqs unthrottled by them in total.
    pub unthrottled: u64,
    /// Its time per CSD: its own segment, or with `attribution` "listed" the whole CSD's
    /// (shared with the other cgroups of that CSD).
    pub per_csd_ns: Option<Stats>,
    /// CPUs that ran those CSDs.
    pub cpus: Vec<u32>,
    /// Sum of `per_csd_ns`.
    pub total_ns: u64,
    /// Entities enqueued in its segments (None without an enqueue probe).
    pub enqueued: Option<u64>,
    /// Tasks made runnable (listed: in the whole CSDs it took part in).
    pub runnable: Option<u64>,
    /// `segments` (a probe on unthrottle_cfs_rq split each CSD per cgroup) or `listed`
    /// (cgroups read from rq->cfsb_csd_list at CSD entry; time and runnable shared).
    pub attribution: String,
}

/// A timer-interrupt span and one cgroup's part of it.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
pub struct SpanShare {
    pub cpu: u32,
    pub ts_ns: u64,
    /// The whole interrupt (IRQs off).
    pub duration_ns: u64,
    /// Period timers in it (all cgroups) and their time.
    pub period_timers: u32,
    pub period_timers_ns: u64,
    /// This cgroup's callbacks in it and their time.
    pub own_timers: u32,
    pub own_ns: u64,
}

impl From<&CgroupSpan> for SpanShare {
    fn from(s: &CgroupSpan) -> Self {
        SpanShare {
            cpu: s.cpu,
            ts_ns: s.ts_ns,
            duration_ns: s.duration_ns,
            period_timers: s.timers,
            period_timers_ns: s.timers_ns,
            own_timers: s.own_timers,
            own_ns: s.own_ns,
        }
    }
}

/// The worst IRQs-off span of the run (node or CPU).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct WorstIrqsOff {
    /// `irq_span`, `period_callback` or `async_csd`.
    pub basis: String,
    pub cpu: u32,
    pub duration_ns: u64,
    /// For an `irq_span`: the period timers in it and their time.
    #[serde(default)]
    pub period_timers: Option<u32>,
    #[serde(default)]
    pub period_timers_ns: Option<u64>,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct Culprit {
    #[serde(flatten)]
    pub cgroup: CgroupReport,
    pub reason: String,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct CpuReport {
    pub cpu: u32,
    pub period_timers: u64,
    /// Sum of callback durations on this CPU (IRQs off).
    pub timer_irq_ns: u64,
    pub max_callback_ns: u64,
    /// Longest run of back-to-back callbacks (one interrupt serving several timers).
    #[serde(default)]
    pub max_chain_ns: u64,
    /// Async-unthrottle CSDs run on this CPU, their total and longest time (IRQs off).
    #[serde(default)]
    pub async_csds: u64,
    #[serde(default)]
    pub async_ns: u64,
    #[serde(default)]
    pub max_async_ns: u64,
    /// Timer interrupts on this CPU that ran period timers.
    #[serde(default)]
    pub irq_spans: u64,
    /// Their whole times (IRQs off); null where spans are not traced or none ran a timer.
    #[serde(default)]
    pub irq_span_ns: Option<Stats>,
    #[serde(default)]
    pub max_irq_span_ns: Option<u64>,
    /// That longest interrupt: when, and the period timers in it (`timers`, `timers_ns`).
    #[serde(default)]
    pub worst_irq_span: Option<crate::capture::IrqSpanRecord>,
    /// Period timers per such interrupt.
    #[serde(default)]
    pub period_timers_per_span: Option<Stats>,
    /// Share of those interrupts' time the period timers took (0..1).
    #[serde(default)]
    pub period_timer_share: Option<f64>,
    /// watchdog_thresh - the worst IRQs-off span on this CPU (`headroom_basis`).
    #[serde(default)]
    pub headroom_ns: Option<i64>,
    #[serde(default)]
    pub headroom_basis: Option<String>,
}

fn probe_how(p: &ProbeStatus) -> Option<String> {
    match (&p.how, &p.target) {
        (Some(h), Some(t)) => Some(format!("{h} {t}")),
        (Some(h), None) => Some(h.to_string()),
        (None, Some(t)) => Some(t.clone()),
        (None, None) => None,
    }
}

/// A count figure is available when some event carried its `HOW_*` bit.
fn count_figure(
    header: &CaptureHeader,
    flags: u32,
    bits: u32,
    probe: Probe,
    fallback_how: &str,
    periods: u64,
) -> Figure {
    let status = header.probes.get(&probe);
    let available = flags & bits != 0;
    let how = status
        .filter(|s| s.attached)
        .and_then(probe_how)
        .or_else(|| available.then(|| fallback_how.to_string()));
    let reason = match status {
        // Attached but degraded (e.g. counting `enqueue_task_fair`): keep the note.
        _ if available => status.and_then(|s| s.reason.clone()),
        Some(s) if !s.attached => Some(
            s.reason
                .clone()
                .unwrap_or_else(|| format!("the {probe} probe was not attached")),
        ),
        Some(_) if periods == 0 => {
            Some("probe attached, but no period-timer callback was seen".to_string())
        }
        Some(_) => Some("probe attached, but no event carried its count".to_string()),
        None => Some(format!("the capture lists no {probe} probe")),
    };
    Figure {
        available,
        how,
        reason,
    }
}

/// Tasks released per period: the unthrottle probe plus a BTF field (renamed in 6.14, so
/// found by name, never by version).
fn queued_figure(header: &CaptureHeader, flags: u32, periods: u64) -> Figure {
    if flags & HOW_QUEUED != 0 {
        return Figure {
            available: true,
            how: Some("cfs_rq.h_nr_queued (h_nr_running before 6.14) at unthrottle_cfs_rq".into()),
            reason: None,
        };
    }
    let unthrottle = count_figure(
        header,
        flags,
        HOW_UNTHROTTLE,
        Probe::Unthrottle,
        "unthrottle_cfs_rq",
        periods,
    );
    let reason = if unthrottle.available {
        "the kernel's BTF has neither cfs_rq.h_nr_queued nor cfs_rq.h_nr_running".to_string()
    } else {
        format!(
            "needs the unthrottle probe: {}",
            unthrottle.reason.unwrap_or_default()
        )
    };
    Figure {
        available: false,
        how: None,
        reason: Some(reason),
    }
}

/// Async unthrottle: measured when its CSD frame was attached (or, for a capture without the
/// probe list, when events are there).
fn async_figure(header: &CaptureHeader, agg: &Aggregator) -> Figure {
    let status = header.probes.get(&Probe::AsyncUnthrottle);
    let events = agg.async_events();
    let attached = status.is_some_and(|s| s.attached);
    let available = attached || events > 0;
    let how = status
        .filter(|s| s.attached)
        .and_then(probe_how)
        .or_else(|| (events > 0).then(|| "__cfsb_csd_unthrottle".to_string()));
    let reason = match status {
        Some(s) if !s.attached => {
            Some(s.reason.clone().unwrap_or_else(|| {
                format!("the {} probe was not attached", Probe::AsyncUnthrottle)
            }))
        }
        Some(s) if events == 0 => Some(match &s.reason {
            Some(r) => format!("no CSD ran: every unthrottle happened on the timer's own CPU; {r}"),
            None => "no CSD ran: every unthrottle happened on the timer's own CPU".to_string(),
        }),
        Some(s) => s.reason.clone(),
        None if events > 0 => None,
        None => Some(format!(
            "the capture lists no {} probe (recorded by an older cfstrace)",
            Probe::AsyncUnthrottle
        )),
    };
    Figure {
        available,
        how,
        reason,
    }
}

/// Timer-interrupt spans: measured when their frame was attached (or spans are in the capture).
fn irq_span_figure(header: &CaptureHeader, agg: &Aggregator) -> Figure {
    let status = header.probes.get(&Probe::IrqSpan);
    let spans = agg.irq_spans();
    let attached = status.is_some_and(|s| s.attached);
    let how = status
        .filter(|s| s.attached)
        .and_then(probe_how)
        .or_else(|| (spans > 0).then(|| "hrtimer_interrupt".to_string()));
    let reason = match status {
        Some(s) if !s.attached => Some(
            s.reason
                .clone()
                .unwrap_or_else(|| format!("the {} probe was not attached", Probe::IrqSpan)),
        ),
        Some(_) if spans == 0 && agg.periods() > 0 => Some(
            "attached, but no period-timer callback ran inside a traced timer interrupt \
             (a low-resolution timer mode runs hrtimers from the tick, outside \
             hrtimer_interrupt)"
                .to_string(),
        ),
        Some(s) => s.reason.clone(),
        None if spans > 0 => None,
        None => Some(format!(
            "the capture lists no {} probe (recorded by an older cfstrace)",
            Probe::IrqSpan
        )),
    };
    Figure {
        available: attached || spans > 0,
        how,
        reason,
    }
}

/// Per-period spread: exact where the callback's unthrottles are probed (plus the CSDs that
/// finish its work on 6.3+), partial where only the CSDs are seen.
fn spread_figure(header: &CaptureHeader, agg: &Aggregator, async_fig: &Figure) -> Figure {
    let flags = agg.flags_seen();
    let csds = async_fig.available;
    if flags & HOW_SPREAD != 0 {
        return Figure {
            available: true,
            how: Some(format!(
                "unthrottle_cfs_rq inside the callback (cfs_rq->rq->cpu){}",
                if csds {
                    " + the CPUs of the async-unthrottle CSDs until its next callback"
                } else {
                    ""
                }
            )),
            reason: None,
        };
    }
    let unthr = header.probes.get(&Probe::Unthrottle);
    let why_no_probe = if flags & HOW_UNTHROTTLE != 0 {
        "unthrottle_cfs_rq is probed but the BTF lacks cfs_rq.rq or rq.cpu".to_string()
    } else {
        match unthr {
            Some(s) if !s.attached => format!(
                "unthrottle_cfs_rq is not probed ({})",
                s.reason.as_deref().unwrap_or("not attached")
            ),
            Some(_) => "unthrottle_cfs_rq is probed but no callback carried the CPUs".to_string(),
            None => "the capture lists no unthrottle probe".to_string(),
        }
    };
    if csds {
        return Figure {
            available: true,
            how: Some(
                "the CPUs of the async-unthrottle CSDs until the timer's next callback + the \
                 timer's own CPU when its callback made tasks runnable"
                    .to_string(),
            ),
            reason: Some(format!(
                "{why_no_probe}: the figure covers the remote CPUs the CSDs reached (listed \
                 mode: up to {} cfs_rqs a CSD) and the timer's CPU, not cfs_rqs the callback \
                 unthrottled elsewhere",
                tracer_ebpf::MAX_LISTED
            )),
        };
    }
    Figure {
        available: false,
        how: None,
        reason: Some(format!(
            "{why_no_probe}, and no async-unthrottle CSD frame: on which CPUs cgroups were \
             throttled is not known"
        )),
    }
}

fn kmsg_figure(header: &CaptureHeader, agg: &Aggregator) -> Figure {
    match header.probes.get(&Probe::Kmsg) {
        Some(s) if s.attached => Figure {
            available: true,
            how: probe_how(s),
            reason: s.reason.clone(),
        },
        Some(s) => Figure {
            available: !agg.kmsgs().is_empty(),
            how: None,
            reason: Some(
                s.reason
                    .clone()
                    .unwrap_or_else(|| "/dev/kmsg was not read".to_string()),
            ),
        },
        None => Figure {
            available: !agg.kmsgs().is_empty(),
            how: None,
            reason: Some(
                "the capture lists no kmsg reader (recorded by an older cfstrace)".to_string(),
            ),
        },
    }
}

fn figures(header: &CaptureHeader, agg: &Aggregator) -> Figures {
    let flags = agg.flags_seen();
    let n = agg.periods();
    let timer = header.probes.get(&Probe::PeriodTimer);
    let timer_attached = timer.is_some_and(|s| s.attached);
    let callback_ns = Figure {
        available: timer_attached || n > 0,
        how: timer
            .and_then(probe_how)
            .or_else(|| Some(header.backend.to_string())),
        reason: match timer {
            Some(s) if !s.attached => s.reason.clone(),
            Some(s) => s.reason.clone(),
            None if n == 0 => Some("the capture lists no period_timer probe".to_string()),
            None => None,
        },
    };
    let enqueue_fallback = if flags & HOW_ENQUEUE_TASK_FAIR != 0 {
        "enqueue_task_fair"
    } else {
        "enqueue_entity"
    };
    Figures {
        callback_ns,
        loops: count_figure(
            header,
            flags,
            HOW_LOOPS,
            Probe::Distribute,
            "distribute_cfs_runtime",
            n,
        ),
        unthrottled: count_figure(
            header,
            flags,
            HOW_UNTHROTTLE,
            Probe::Unthrottle,
            "unthrottle_cfs_rq",
            n,
        ),
        enqueued: count_figure(
            header,
            flags,
            HOW_ENQUEUE_ENTITY | HOW_ENQUEUE_TASK_FAIR,
            Probe::Enqueue,
            enqueue_fallback,
            n,
        ),
        runnable: count_figure(
            header,
            flags,
            HOW_RUNNABLE,
            Probe::Runnable,
            "sched_update_nr_running_tp",
            n,
        ),
        queued: queued_figure(header, flags, n),
        async_unthrottle: async_figure(header, agg),
        irq_span: irq_span_figure(header, agg),
        spread: Figure::default(),
        kernel_messages: kmsg_figure(header, agg),
    }
}

pub const BASIS_SPAN: &str = "irq_span";
pub const BASIS_CALLBACK: &str = "period_callback";
pub const BASIS_CSD: &str = "async_csd";

/// The worst of (basis, cpu, ns, span) candidates; on a tie the earlier basis wins (a span
/// contains its callbacks, so it is the truer figure).
fn worst_of(cands: impl IntoIterator<Item = WorstIrqsOff>) -> Option<WorstIrqsOff> {
    let rank = |b: &str| match b {
        BASIS_SPAN => 0,
        BASIS_CALLBACK => 1,
        _ => 2,
    };
    cands
        .into_iter()
        .filter(|w| w.duration_ns > 0)
        .min_by_key(|w| (std::cmp::Reverse(w.duration_ns), rank(&w.basis), w.cpu))
}

/// One CPU's IRQs-off candidates: its worst span, callback and CSD.
fn cpu_candidates(
    agg: &Aggregator,
    cpu: u32,
    s: &crate::analysis::aggregate::CpuStats,
) -> Vec<WorstIrqsOff> {
    let mut v = Vec::with_capacity(3);
    if let Some(sp) = agg.cpu_spans(cpu) {
        let w = sp.worst();
        v.push(WorstIrqsOff {
            basis: BASIS_SPAN.into(),
            cpu,
            duration_ns: w.duration_ns,
            period_timers: Some(w.timers),
            period_timers_ns: Some(w.timers_ns),
        });
    }
    v.push(WorstIrqsOff {
        basis: BASIS_CALLBACK.into(),
        cpu,
        duration_ns: s.max_callback_ns,
        period_timers: None,
        period_timers_ns: None,
    });
    v.push(WorstIrqsOff {
        basis: BASIS_CSD.into(),
        cpu,
        duration_ns: s.max_async_ns,
        period_timers: None,
        period_timers_ns: None,
    });
    v
}

fn headroom(thresh_s: Option<u64>, worst_ns: u64) -> Option<i64> {
    let t = i64::try_from(thresh_s?).ok()?.saturating_mul(1_000_000_000);
    Some(t.saturating_sub(i64::try_from(worst_ns).unwrap_or(i64::MAX)))
}

fn plain_workload() -> Workload {
    Workload {
        kind: WorkloadKind::Cgroup,
        application: None,
        container: None,
        pod_uid: None,
        qos: None,
        unit: None,
    }
}

fn async_report(a: &AsyncStats) -> AsyncReport {
    let d = a.per_csd_ns();
    AsyncReport {
        csds: a.csds(),
        unthrottled: a.unthrottled(),
        per_csd_ns: (d.count() > 0).then(|| Stats::of(d)),
        cpus: a.cpus().iter().collect(),
        total_ns: d.sum(),
        enqueued: a.enqueued(),
        runnable: a.runnable(),
        attribution: if a.flags() & ASYNC_LISTED != 0 {
            "listed".to_string()
        } else {
            "segments".to_string()
        },
    }
}

/// How far a kernel message may be from the period change it explains: it is logged in the
/// callback that scales, the new period shows in the next callback, and /dev/kmsg's clock
/// (local_clock) and the events' (CLOCK_MONOTONIC) may differ a little.
const KMSG_WINDOW_NS: u64 = 5_000_000_000;

/// Which kernel messages explain which period changes, and which cgroups they concern.
#[derive(Default)]
struct KmsgMatch {
    /// (cgroup, index of the change) -> index of the message.
    changes: HashMap<(u64, usize), usize>,
    /// cgroup -> indexes of its messages.
    by_cgroup: HashMap<u64, Vec<usize>>,
    unattributed: Vec<usize>,
}

fn match_kmsgs(agg: &Aggregator) -> KmsgMatch {
    let mut km = KmsgMatch::default();
    for (i, m) in agg.kmsgs().iter().enumerate() {
        let m_ts = m.ts_us.saturating_mul(1_000);
        let new_ns = m.period_us.saturating_mul(1_000);
        // A change to exactly this period, nearest in time and not explained yet.
        let mut best: Option<(u64, u64, usize)> = None;
        if m.scaled_up {
            for v in agg.cgroups().filter(|v| v.id != UNRESOLVED_ID) {
                let Some(pr) = v.stats.precursors() else {
                    continue;
                };
                for (j, c) in pr.changes().iter().enumerate() {
                    let d = c.ts_ns.abs_diff(m_ts);
                    if c.to_ns == new_ns
                        && d <= KMSG_WINDOW_NS
                        && !km.changes.contains_key(&(v.id, j))
                        && best.is_none_or(|b| (d, v.id) < (b.0, b.1))
                    {
                        best = Some((d, v.id, j));
                    }
                }
            }
        }
        if let Some((_, id, j)) = best {
            km.changes.insert((id, j), i);
            km.by_cgroup.entry(id).or_default().push(i);
            continue;
        }
        // Otherwise (it could not scale, or the change predates the recording): a timer on
        // that CPU whose period is the message's; the busiest if several.
        let owner = agg
            .cgroups()
            .filter(|v| {
                v.id != UNRESOLVED_ID
                    && v.stats.period_ns() == Some(new_ns)
                    && v.stats.cpus().contains(m.cpu)
            })
            .max_by_key(|v| (v.stats.total_callback_ns(), std::cmp::Reverse(v.id)))
            .map(|v| v.id);
        match owner {
            Some(id) => km.by_cgroup.entry(id).or_default().push(i),
            None => km.unattributed.push(i),
        }
    }
    km
}

/// Everything a cgroup's report needs besides its own stats.
struct Ctx<'a> {
    figs: &'a Figures,
    thresh_s: Option<u64>,
    ncpus: u32,
    agg: &'a Aggregator,
    km: &'a KmsgMatch,
    kmsg_read: bool,
}

fn spread_report(sp: &SpreadStats, ncpus: u32) -> SpreadReport {
    let d = sp.per_period();
    let st = Stats::of(&d);
    let union = sp.cpus().len();
    let mut sources = Vec::new();
    for (bit, name) in [
        (SPREAD_FROM_PROBE, "unthrottle_cfs_rq"),
        (SPREAD_FROM_CSD, "async_csd"),
        (SPREAD_FROM_TIMER_CPU, "timer_cpu"),
    ] {
        if sp.sources() & bit != 0 {
            sources.push(name.to_string());
        }
    }
    SpreadReport {
        per_period: st,
        cpus: sp.cpus().iter().collect(),
        ncpus: union,
        summary: format!(
            "throttled on {} of {ncpus} CPUs in one period (typically {}; {union} over the run)",
            st.max, st.p50
        ),
        sources,
        overflow: sp.overflow(),
    }
}

fn change_report(
    v: &CgroupView<'_>,
    j: usize,
    c: &PeriodChange,
    ctx: &Ctx<'_>,
) -> PeriodChangeReport {
    let us = |ns: u64| ns / 1_000;
    let quota = |q: u64| (q != u64::MAX && q > 0).then_some(q / 1_000);
    let (by, evidence) = match ctx.km.changes.get(&(v.id, j)) {
        Some(&i) => {
            let m = &ctx.agg.kmsgs()[i];
            (
                "kernel",
                format!(
                    "kernel message at {} on cpu{}: period too short, scaling up (new \
                     cfs_period_us = {}, cfs_quota_us = {})",
                    human_ns(m.ts_us.saturating_mul(1_000)),
                    m.cpu,
                    m.period_us,
                    m.quota_us
                ),
            )
        }
        None => {
            let base = if ctx.kmsg_read {
                "no kernel \"period too short\" message with this period"
            } else {
                "/dev/kmsg was not read"
            };
            let doubled = c.to_ns == c.from_ns.saturating_mul(2)
                && quota(c.from_quota_ns).is_some()
                && c.to_quota_ns == c.from_quota_ns.saturating_mul(2);
            let dbl = if doubled {
                " (period and quota both doubled, as the kernel's own fix does: its message may \
                 have been rate-limited)"
            } else {
                ""
            };
            if ctx.agg.file_periods(v.id).contains(&us(c.to_ns)) {
                (
                    "write",
                    format!("{base}; the cgroup file shows the new period{dbl}"),
                )
            } else {
                (
                    "unknown",
                    format!("{base}; the cgroup file was not seen with the new period{dbl}"),
                )
            }
        }
    };
    PeriodChangeReport {
        ts_ns: c.ts_ns,
        cpu: c.cpu,
        from_us: us(c.from_ns),
        to_us: us(c.to_ns),
        from_quota_us: quota(c.from_quota_ns),
        to_quota_us: quota(c.to_quota_ns),
        by: by.to_string(),
        evidence,
    }
}

fn precursor_report(v: &CgroupView<'_>, ctx: &Ctx<'_>) -> Option<PrecursorReport> {
    if v.stats.periods() == 0 {
        return None;
    }
    let mut r = PrecursorReport {
        multi_pass_callbacks: ctx.figs.loops.available.then_some(0),
        ..Default::default()
    };
    if let Some(pr) = v.stats.precursors() {
        r.period_changes = pr
            .changes()
            .iter()
            .enumerate()
            .map(|(j, c)| change_report(v, j, c, ctx))
            .collect();
        r.period_changes_dropped = pr.changes_dropped();
        r.callbacks_over_period = pr.over_period();
        r.multi_pass_callbacks = ctx.figs.loops.available.then_some(pr.multi_pass());
    }
    if let Some(ix) = ctx.km.by_cgroup.get(&v.id) {
        r.kernel_messages = ix.iter().map(|&i| ctx.agg.kmsgs()[i].clone()).collect();
    }
    Some(r)
}

fn cgroup_report(v: &CgroupView<'_>, ctx: &Ctx<'_>) -> CgroupReport {
    let figs = ctx.figs;
    let thresh_s = ctx.thresh_s;
    let s = v.stats;
    let cb = s.callback_ns();
    let mut notes: Vec<String> = Vec::new();
    if let Some(n) = v.record.and_then(|r| r.note.clone()) {
        notes.push(n);
    }
    if v.id == UNRESOLVED_ID {
        notes.push(format!(
            "{UNRESOLVED_NAME}: callbacks whose timer could not be traced to a cgroup \
             (a failed kernel read, or the kernel layout lacks a field)"
        ));
    } else if v.record.is_none() {
        notes.push(
            "never named: the cgroup went away (or could not be read) before its path was"
                .to_string(),
        );
    }
    if let Some((lo, hi)) = s.period_change() {
        notes.push(format!(
            "the kernel's period changed during the run ({} -> {}): after a callback overran \
             its period the kernel scales period and quota up",
            human_ns(lo),
            human_ns(hi)
        ));
    }
    if let Some(l) = s.max_loops().filter(|&l| l > 1) {
        notes.push(format!(
            "{l} distribute passes in one callback: the timer overran its period and looped"
        ));
    }
    if let Some(p) = s.period_ns().filter(|&p| p > 0 && cb.max() >= p) {
        notes.push(format!(
            "worst callback {} is at least the cfs period {}: the timer cannot keep up",
            human_ns(cb.max()),
            human_ns(p)
        ));
    }
    let counted = |avail: bool, d: Option<&Distribution>| d.filter(|_| avail).map(Stats::of);
    let rec = v.record;
    // The span that held its callback is the IRQs-off time the watchdog saw; a callback
    // outside any recorded span still counts on its own.
    let cgroup_worst = match s.worst_span() {
        Some(w) if w.duration_ns >= cb.max() => (w.duration_ns, BASIS_SPAN),
        _ => (cb.max(), BASIS_CALLBACK),
    };
    CgroupReport {
        id: v.id,
        path: rec.and_then(|r| r.path.clone()),
        workload: rec.map_or_else(plain_workload, |r| r.workload.clone()),
        processes: rec.map(|r| r.processes.clone()).unwrap_or_default(),
        period_us: rec.and_then(|r| r.period_us),
        quota_us: rec.and_then(|r| r.quota_us),
        parents: rec.and_then(|r| r.parents.clone()),
        periods: s.periods(),
        total_callback_ns: s.total_callback_ns(),
        callback_ns: Stats::of(cb),
        unthrottled_per_period: counted(figs.unthrottled.available, s.unthrottled()),
        enqueued_per_period: counted(figs.enqueued.available, s.enqueued()),
        queued_per_period: counted(figs.queued.available, s.queued()),
        runnable_per_period: counted(figs.runnable.available, s.runnable()),
        max_loops: s.max_loops().filter(|_| figs.loops.available),
        cpus: s.cpus().iter().collect(),
        headroom_ns: headroom(thresh_s, cgroup_worst.0),
        headroom_basis: (s.periods() > 0).then(|| cgroup_worst.1.to_string()),
        worst_irq_span: s.worst_span().map(SpanShare::from),
        kernel_period_us: s.period_ns().filter(|&p| p > 0).map(|p| p / 1_000),
        kernel_quota_us: s
            .quota_ns()
            .filter(|&q| q != u64::MAX && q > 0)
            .map(|q| q / 1_000),
        note: (!notes.is_empty()).then(|| notes.join("; ")),
        async_unthrottle: s
            .asyncs()
            .filter(|_| figs.async_unthrottle.available)
            .map(async_report),
        spread: s
            .spread()
            .filter(|_| figs.spread.available && s.periods() > 0)
            .map(|sp| spread_report(sp, ctx.ncpus)),
        precursors: precursor_report(v, ctx),
    }
}

/// Short workload label: `yarn application_…`, `k8s pod <uid8>`, `docker <id12>`,
/// `systemd foo.service`; None for a plain cgroup.
pub fn workload_label(w: &Workload) -> Option<String> {
    let short = |s: &str, n: usize| s.chars().take(n).collect::<String>();
    match w.kind {
        WorkloadKind::Yarn => w
            .application
            .as_deref()
            .or(w.container.as_deref())
            .map(|a| format!("yarn {a}")),
        WorkloadKind::Kubernetes => match (&w.pod_uid, &w.container) {
            (Some(u), _) => Some(format!("k8s pod {}", short(u, 8))),
            (None, Some(c)) => Some(format!("k8s {}", short(c, 12))),
            (None, None) => Some("k8s".to_string()),
        },
        WorkloadKind::Docker => w
            .container
            .as_deref()
            .map(|c| format!("docker {}", short(c, 12))),
        WorkloadKind::Systemd => w.unit.as_deref().map(|u| format!("systemd {u}")),
        WorkloadKind::Cgroup => None,
    }
}

/// Distinct comms of the busiest processes, busiest first.
fn top_comms(procs: &[ProcessInfo], n: usize) -> Vec<&str> {
    let mut out: Vec<&str> = Vec::new();
    for p in procs {
        if !out.contains(&p.comm.as_str()) {
            out.push(&p.comm);
            if out.len() == n {
                break;
            }
        }
    }
    out
}

fn display_path(c: &CgroupReport) -> String {
    match &c.path {
        Some(p) => p.clone(),
        None if c.id == UNRESOLVED_ID => UNRESOLVED_NAME.to_string(),
        None => format!("(cgroup {})", c.id),
    }
}

/// Headroom in seconds to 4 decimals, trailing zeros trimmed (`9.9997 s`, `10 s`).
fn seconds(ns: i64) -> String {
    let s = format!("{:.4}", ns as f64 / 1e9);
    let s = s.trim_end_matches('0').trim_end_matches('.');
    format!("{s} s")
}

fn headroom_phrase(h: Option<i64>, wd: &WatchdogFacts) -> String {
    match (h, wd.thresh_s) {
        (Some(h), Some(t)) if h >= 0 => {
            let off = if wd.enabled {
                ""
            } else {
                " (watchdog disabled)"
            };
            format!("watchdog headroom {} of {t} s{off}", seconds(h))
        }
        (Some(h), Some(t)) => format!(
            "exceeds the {t} s watchdog threshold by {}",
            human_ns(h.unsigned_abs())
        ),
        _ => "watchdog_thresh unknown".to_string(),
    }
}

fn culprit_reason(c: &CgroupReport, wd: &WatchdogFacts) -> String {
    let mut who = display_path(c);
    let label = workload_label(&c.workload).or_else(|| {
        let comms = top_comms(&c.processes, 2);
        (!comms.is_empty()).then(|| comms.join(", "))
    });
    if let Some(l) = label {
        let _ = write!(who, " ({l})");
    }
    let mut r = format!(
        "{who}: {} period-timer callback{} held IRQs off for {} in total, worst single \
         callback {} (p99 {})",
        c.periods,
        if c.periods == 1 { "" } else { "s" },
        human_ns(c.total_callback_ns),
        human_ns(c.callback_ns.max),
        human_ns(c.callback_ns.p99),
    );
    if let Some(u) = &c.unthrottled_per_period {
        let _ = write!(r, ", {:.1} cfs_rqs unthrottled per period", u.mean);
    }
    // The work 6.3+ moved off the timer's CPU: not in the callback time above.
    if let Some(a) = c.async_unthrottle.as_ref().filter(|a| a.unthrottled > 0) {
        let _ = write!(
            r,
            " + {} cfs_rq{} unthrottled asynchronously on {} CPU{}",
            a.unthrottled,
            if a.unthrottled == 1 { "" } else { "s" },
            a.cpus.len(),
            if a.cpus.len() == 1 { "" } else { "s" },
        );
        if let Some(p) = &a.per_csd_ns {
            let _ = write!(
                r,
                " ({} CSD{}, worst {})",
                a.csds,
                if a.csds == 1 { "" } else { "s" },
                human_ns(p.max)
            );
        }
    }
    // What `runq -g` on a vmcore would have shown.
    if let Some(sp) = c.spread.as_ref().filter(|sp| sp.per_period.max > 0) {
        let _ = write!(r, "; {}", sp.summary);
    }
    if let Some(w) = &c.worst_irq_span {
        let _ = write!(
            r,
            "; its timers took {} of the worst {} timer-interrupt span on cpu{} ({} period \
             timer{} in it)",
            human_ns(w.own_ns),
            human_ns(w.duration_ns),
            w.cpu,
            w.period_timers,
            if w.period_timers == 1 { "" } else { "s" },
        );
    }
    if let Some(p) = c.precursors.as_ref().filter(|p| p.any()) {
        let _ = write!(r, "; lockup precursors: {}", precursor_phrase(p));
    }
    let _ = write!(r, "; {}", headroom_phrase(c.headroom_ns, wd));
    r
}

/// `period changed 2x by the kernel (1.00 ms -> 4.00 ms), 3 callbacks >= their period, ...`.
fn precursor_phrase(p: &PrecursorReport) -> String {
    let plural = |n: u64, one: &str, many: &str| {
        if n == 1 {
            format!("1 {one}")
        } else {
            format!("{n} {many}")
        }
    };
    let mut parts = Vec::new();
    if let (Some(first), Some(last)) = (p.period_changes.first(), p.period_changes.last()) {
        let n = p.period_changes.len() as u64 + p.period_changes_dropped;
        let kernel = p.period_changes.iter().filter(|c| c.by == "kernel").count();
        let by = match kernel {
            0 => String::new(),
            k if k == p.period_changes.len() => " by the kernel".to_string(),
            k => format!(" ({k} by the kernel)"),
        };
        parts.push(format!(
            "period changed {}{by} ({} -> {})",
            plural(n, "time", "times"),
            human_ns(first.from_us.saturating_mul(1_000)),
            human_ns(last.to_us.saturating_mul(1_000))
        ));
    }
    if p.callbacks_over_period > 0 {
        parts.push(format!(
            "{} at least their period",
            plural(p.callbacks_over_period, "callback", "callbacks")
        ));
    }
    if let Some(n) = p.multi_pass_callbacks.filter(|&n| n > 0) {
        parts.push(format!(
            "{} with several distribute passes",
            plural(n, "callback", "callbacks")
        ));
    }
    if !p.kernel_messages.is_empty() {
        parts.push(format!(
            "{} \"period too short\"",
            plural(
                p.kernel_messages.len() as u64,
                "kernel message",
                "kernel messages"
            )
        ));
    }
    parts.join(", ")
}

fn node_precursors(cgroups: &[CgroupReport], agg: &Aggregator, km: &KmsgMatch) -> NodePrecursors {
    let mut n = NodePrecursors {
        kernel_messages: agg.kmsgs().len() as u64 + agg.kmsgs_dropped(),
        unattributed_messages: km
            .unattributed
            .iter()
            .map(|&i| agg.kmsgs()[i].clone())
            .collect(),
        ..Default::default()
    };
    for c in cgroups {
        let Some(p) = &c.precursors else {
            continue;
        };
        n.period_changes += p.period_changes.len() as u64 + p.period_changes_dropped;
        n.period_changes_by_kernel +=
            p.period_changes.iter().filter(|x| x.by == "kernel").count() as u64;
        n.period_changes_by_write +=
            p.period_changes.iter().filter(|x| x.by == "write").count() as u64;
        n.callbacks_over_period += p.callbacks_over_period;
        if let Some(m) = p.multi_pass_callbacks {
            *n.multi_pass_callbacks.get_or_insert(0) += m;
        }
        if p.any() {
            n.cgroups.push(c.id);
        }
    }
    n
}

/// Assemble the report. `duration_ns` is the recording's length; `warnings` are the capture's.
pub fn build_report(
    header: &CaptureHeader,
    agg: &Aggregator,
    duration_ns: u64,
    warnings: Vec<String>,
) -> Report {
    let host = &header.host;
    let thresh = host.watchdog.thresh_s;
    let mut figs = figures(header, agg);
    figs.spread = spread_figure(header, agg, &figs.async_unthrottle);

    let km = match_kmsgs(agg);
    let ctx = Ctx {
        figs: &figs,
        thresh_s: thresh,
        ncpus: host.ncpus,
        agg,
        km: &km,
        kmsg_read: header.probes.get(&Probe::Kmsg).is_some_and(|p| p.attached),
    };
    let mut cgroups: Vec<CgroupReport> = agg.cgroups().map(|v| cgroup_report(&v, &ctx)).collect();
    cgroups.sort_by(|a, b| {
        b.total_callback_ns
            .cmp(&a.total_callback_ns)
            .then(b.callback_ns.max.cmp(&a.callback_ns.max))
            .then(a.id.cmp(&b.id))
    });

    // Unresolved callbacks are no actionable culprit while a named cgroup is in the running.
    let culprit = cgroups
        .iter()
        .find(|c| c.id != UNRESOLVED_ID && c.periods > 0)
        .or_else(|| cgroups.iter().find(|c| c.periods > 0))
        .map(|c| Culprit {
            reason: culprit_reason(c, &host.watchdog),
            cgroup: c.clone(),
        });
    let precursors = Some(node_precursors(&cgroups, agg, &km));

    let cpus: Vec<CpuReport> = agg
        .cpus()
        .map(|(cpu, s)| {
            let spans = agg.cpu_spans(cpu);
            let worst = worst_of(cpu_candidates(agg, cpu, s));
            CpuReport {
                cpu,
                period_timers: s.period_timers,
                timer_irq_ns: s.callback_ns,
                max_callback_ns: s.max_callback_ns,
                max_chain_ns: s.max_chain_ns,
                async_csds: s.async_csds,
                async_ns: s.async_ns,
                max_async_ns: s.max_async_ns,
                irq_spans: spans.map_or(0, |x| x.span_ns().count()),
                irq_span_ns: spans.map(|x| Stats::of(x.span_ns())),
                max_irq_span_ns: spans.map(|x| x.span_ns().max()),
                worst_irq_span: spans.map(|x| *x.worst()),
                period_timers_per_span: spans.map(|x| Stats::of(x.timers_per_span())),
                period_timer_share: spans.map(|x| x.timer_share()),
                headroom_ns: worst.as_ref().and_then(|w| headroom(thresh, w.duration_ns)),
                headroom_basis: worst.map(|w| w.basis),
            }
        })
        .collect();
    // Node: the worst of every CPU's worst.
    let worst_irqs_off = worst_of(agg.cpus().flat_map(|(cpu, s)| cpu_candidates(agg, cpu, s)));
    let headroom_ns = worst_irqs_off
        .as_ref()
        .and_then(|w| headroom(thresh, w.duration_ns));
    let headroom_basis = worst_irqs_off.as_ref().map(|w| w.basis.clone());

    let loss = agg.loss().copied().unwrap_or_default();
    let end = agg.end();
    let events = Events {
        periods: agg.periods(),
        lost: loss.lost().max(end.map_or(0, |e| e.lost)),
        ringbuf_full: loss.ringbuf_full,
        unmatched_exit: loss.unmatched_exit,
        missed_exit: loss.missed_exit,
        cgroup_read: loss.cgroup_read,
        async_unthrottle: agg.async_events(),
        async_csds: agg.async_csds(),
        async_empty: agg.async_empty(),
        csd_unmatched_exit: loss.csd_unmatched_exit,
        csd_missed_exit: loss.csd_missed_exit,
        irq_spans: agg.irq_spans(),
        periods_in_span: agg.periods_in_span(),
        span_unmatched_exit: loss.span_unmatched_exit,
        span_missed_exit: loss.span_missed_exit,
        periods_unsent: agg.unsent_periods(),
        unsent_full: loss.unsent_full,
    };

    let mut all = warnings;
    all.extend(agg.warnings());
    if events.lost > 0 && events.periods_unsent > 0 {
        all.push(format!(
            "{} event(s) lost (ring buffer full); {} were period-timer callbacks, counted back \
             from the kernel's own sums: callback counts, IRQs-off totals, each cgroup's worst \
             callback and each CPU's worst span stay exact, their quantiles are approximate \
             (log2 buckets), the other per-period figures undercount",
            events.lost, events.periods_unsent
        ));
    } else if events.lost > 0 {
        all.push(format!(
            "{} event(s) lost (ring buffer full): the figures undercount",
            events.lost
        ));
    }
    if events.unsent_full > 0 {
        all.push(format!(
            "{} lost callback(s) could not be summed in the kernel either (its map was full): \
             the callback counts undercount by that much",
            events.unsent_full
        ));
    }
    if events.cgroup_read > 0 {
        all.push(format!(
            "{} timer -> cgroup read(s) failed: those callbacks are under {UNRESOLVED_NAME}",
            events.cgroup_read
        ));
    }
    if events.missed_exit > 0 || events.unmatched_exit > 0 {
        all.push(format!(
            "{} callback end(s) missed, {} end(s) without a start: a few durations are missing",
            events.missed_exit, events.unmatched_exit
        ));
    }
    if events.csd_missed_exit > 0 || events.csd_unmatched_exit > 0 {
        all.push(format!(
            "{} async-unthrottle CSD end(s) missed (their events lost), {} end(s) without a start",
            events.csd_missed_exit, events.csd_unmatched_exit
        ));
    }
    if events.span_missed_exit > 0 || events.span_unmatched_exit > 0 {
        all.push(format!(
            "{} timer-interrupt span end(s) missed, {} end(s) without a start: a few spans are \
             missing",
            events.span_missed_exit, events.span_unmatched_exit
        ));
    }
    if figs.irq_span.available && agg.irq_spans() > 0 && agg.periods_in_span() < agg.periods() {
        all.push(format!(
            "{} of {} callbacks ran outside a traced timer interrupt: their own time stands in \
             for the interrupt's",
            agg.periods() - agg.periods_in_span(),
            agg.periods()
        ));
    }
    if let Some(e) = end.filter(|e| e.periods > agg.periods()) {
        all.push(format!(
            "the end line counts {} callbacks but only {} are in the capture",
            e.periods,
            agg.periods()
        ));
    }
    if thresh.is_none() {
        all.push("watchdog_thresh could not be read: no headroom figures".to_string());
    } else if !host.watchdog.enabled {
        all.push(
            "the hard-lockup watchdog is disabled on this node: headroom is measured against \
             watchdog_thresh all the same"
                .to_string(),
        );
    }
    let mut warnings = Vec::with_capacity(all.len());
    for w in all {
        if !warnings.contains(&w) {
            warnings.push(w);
        }
    }

    let mut report = Report {
        schema: REPORT_SCHEMA.to_string(),
        tool_version: env!("CARGO_PKG_VERSION").to_string(),
        hostname: host.hostname.clone(),
        kernel: host.kernel.clone(),
        ncpus: host.ncpus,
        backend: header.backend,
        backend_requested: header.backend_requested,
        probes: header.probes.clone(),
        watchdog: host.watchdog.clone(),
        duration_s: duration_ns as f64 / 1e9,
        events,
        figures: figs,
        cgroups,
        cpus,
        headroom_ns,
        headroom_basis,
        worst_irqs_off,
        headroom_alert: None,
        precursors,
        culprit,
        warnings,
    };
    report.set_highlight_under(DEFAULT_HIGHLIGHT_PCT);
    report
}

/// Replay a capture and build its report. The duration is the end line's, else the span of
/// the callbacks; the capture's warnings become the report's.
pub fn report_from_capture(path: &Path) -> Result<Report, ReportError> {
    let mut agg = Aggregator::new();
    let (header, stats) = capture::replay(path, &mut |l| agg.feed(l))?;
    let duration_ns = agg.end().map_or_else(|| agg.span_ns(), |e| e.duration_ns);
    Ok(build_report(&header, &agg, duration_ns, stats.warnings))
}

/// `812 ns`, `41.2 us`, `310 us`, `1.25 ms`, `12.3 s`: three significant digits.
pub fn human_ns(ns: u64) -> String {
    if ns < 1_000 {
        return format!("{ns} ns");
    }
    const UNITS: [(f64, &str); 3] = [(1e3, "us"), (1e6, "ms"), (1e9, "s")];
    let mut i = if ns < 1_000_000 {
        0
    } else if ns < 1_000_000_000 {
        1
    } else {
        2
    };
    let mut v = ns as f64 / UNITS[i].0;
    // 999.7 us rounds to "1000 us": say 1.00 ms instead.
    if v >= 999.5 && i < 2 {
        i += 1;
        v = ns as f64 / UNITS[i].0;
    }
    let digits = if v >= 99.95 {
        0
    } else if v >= 9.995 {
        1
    } else {
        2
    };
    format!("{v:.digits$} {}", UNITS[i].1)
}

// ---------------------------------------------------------------------------------------------
// Terminal rendering.

const BOLD: &str = "\x1b[1m";
const RED: &str = "\x1b[31m";
const BOLD_RED: &str = "\x1b[1;31m";
const RESET: &str = "\x1b[0m";
const TOP_CGROUPS: usize = 20;
const TOP_CPUS: usize = 8;
const PATH_W: usize = 48;
const WORKLOAD_W: usize = 28;

/// Shorten to `width` chars with an ellipsis in the middle (both ends of a cgroup path
/// matter: the slice it sits in and the container id at its tip).
pub fn ellipsize_middle(s: &str, width: usize) -> String {
    let n = s.chars().count();
    if n <= width || width < 3 {
        return s.to_string();
    }
    // The tip (container id, unit) identifies the cgroup best: give it two thirds.
    let head = (width - 1) / 3;
    let tail = width - 1 - head;
    let mut out: String = s.chars().take(head).collect();
    out.push('…');
    out.extend(s.chars().skip(n - tail));
    out
}

/// Left-align to `width` chars (not bytes: paths may hold the ellipsis).
pub(crate) fn pad(s: &str, width: usize) -> String {
    let n = s.chars().count();
    let mut out = s.to_string();
    out.extend(std::iter::repeat_n(' ', width.saturating_sub(n)));
    out
}

/// `s` in the ANSI attributes `code`, only when `color`.
pub(crate) fn paint(s: &str, code: &str, color: bool) -> String {
    if color {
        format!("{code}{s}{RESET}")
    } else {
        s.to_string()
    }
}

fn p50_max(s: &Option<Stats>) -> String {
    s.as_ref()
        .map_or_else(|| "-".to_string(), |s| format!("{}/{}", s.p50, s.max))
}

/// Headroom `h` under `under_pct` % of watchdog_thresh (the highlight, in red).
fn low_headroom(h: Option<i64>, thresh_s: Option<u64>, under_pct: f64) -> bool {
    match (h, thresh_s) {
        (Some(h), Some(t)) if t > 0 => (h as f64) * 100.0 < t as f64 * 1e9 * under_pct,
        _ => false,
    }
}

/// `20ms`, `1.5ms`, `500us`: a cgroup setting in microseconds.
fn us_short(us: u64) -> String {
    if us >= 1_000 && us.is_multiple_of(1_000) {
        format!("{}ms", us / 1_000)
    } else if us >= 1_000 {
        let s = format!("{:.3}", us as f64 / 1e3);
        format!("{}ms", s.trim_end_matches('0').trim_end_matches('.'))
    } else {
        format!("{us}us")
    }
}

/// The parent chain as one line: `under /a/b <- /a (quota 20ms/100ms) <- /`; a chain cut at
/// MAX_PARENTS shows `<- …` before the root.
pub fn parents_phrase(parents: &[ParentRecord]) -> String {
    let mut s = String::from("under ");
    for p in parents {
        s.push_str(&ellipsize_middle(&p.path, PATH_W));
        match (p.quota_us, p.period_us) {
            (Some(q), Some(per)) => {
                let _ = write!(s, " (quota {}/{})", us_short(q), us_short(per));
            }
            (Some(q), None) => {
                let _ = write!(s, " (quota {})", us_short(q));
            }
            _ => {}
        }
        s.push_str(" <- ");
    }
    let top_level = |p: &ParentRecord| p.path.trim_matches('/').split('/').count() <= 1;
    if parents.last().is_some_and(|p| !top_level(p)) {
        s.push_str("… <- ");
    }
    s.push('/');
    s
}

fn headroom_cell(h: Option<i64>) -> String {
    match h {
        Some(h) if h >= 0 => seconds(h).replace(' ', ""),
        Some(h) => format!("-{}", human_ns(h.unsigned_abs()).replace(' ', "")),
        None => "-".to_string(),
    }
}

/// The report as a terse terminal table (bcc `hardirqs` style).
/// Probe reasons in the table are cut here; `--json` has them whole.
const REASON_W: usize = 110;

fn shorten(s: &str, width: usize) -> String {
    if s.chars().count() <= width {
        return s.to_string();
    }
    let mut t: String = s.chars().take(width - 1).collect();
    t.push('…');
    t
}

pub fn render_text(report: &Report, color: bool) -> String {
    let mut o = String::new();
    let wd = &report.watchdog;
    let _ = writeln!(
        o,
        "cfstrace {}  {}  kernel {}  {} CPUs  backend {} (requested {})",
        report.tool_version,
        report.hostname,
        report.kernel,
        report.ncpus,
        report.backend,
        report.backend_requested
    );
    let e = &report.events;
    let _ = writeln!(
        o,
        "duration {:.2} s  period-timer callbacks {}  lost {}",
        report.duration_s, e.periods, e.lost
    );
    let thresh = wd
        .thresh_s
        .map_or_else(|| "unknown".to_string(), |t| format!("{t} s"));
    let node = match report.headroom_ns {
        Some(h) => {
            let cell = paint(
                &headroom_cell(Some(h)).replace('s', " s"),
                RED,
                color && low_headroom(Some(h), wd.thresh_s, report.highlight_under()),
            );
            let worst = match &report.worst_irqs_off {
                Some(w) if w.basis == BASIS_SPAN => format!(
                    "worst timer interrupt {} on cpu{}: {} period timer{} took {}",
                    human_ns(w.duration_ns),
                    w.cpu,
                    w.period_timers.unwrap_or(0),
                    if w.period_timers == Some(1) { "" } else { "s" },
                    human_ns(w.period_timers_ns.unwrap_or(0))
                ),
                Some(w) if w.basis == BASIS_CSD => format!(
                    "worst async-unthrottle CSD {} on cpu{}",
                    human_ns(w.duration_ns),
                    w.cpu
                ),
                Some(w) => format!("worst callback {} on cpu{}", human_ns(w.duration_ns), w.cpu),
                // A report from before `worst_irqs_off`.
                None => format!(
                    "worst callback {}",
                    human_ns(
                        report
                            .cgroups
                            .iter()
                            .map(|c| c.callback_ns.max)
                            .max()
                            .unwrap_or(0)
                    )
                ),
            };
            format!("  node headroom {cell} ({worst})")
        }
        None => String::new(),
    };
    let _ = writeln!(
        o,
        "watchdog {}  thresh {thresh}{node}",
        if wd.enabled { "enabled" } else { "DISABLED" }
    );
    if let Some(a) = report.headroom_alert.as_ref().filter(|a| a.alert) {
        let line = format!(
            "!! HEADROOM ALERT: node headroom {:.4}% of watchdog_thresh ({thresh}) is below {}% \
             (--highlight-under)",
            a.headroom_pct.unwrap_or(0.0),
            a.under_pct
        );
        let _ = writeln!(o, "{}", paint(&line, BOLD_RED, color));
    }
    // Pipeline order: the frame first.
    let probes = Probe::REPORT_ORDER
        .iter()
        .filter_map(|name| report.probes.get(name).map(|p| (name, p)));
    for (name, p) in probes {
        if p.attached {
            let how = probe_how(p).unwrap_or_else(|| "attached".to_string());
            let _ = write!(o, "  {name:<16} {how}");
            if let Some(r) = &p.reason {
                let _ = write!(o, "  ({})", shorten(r, REASON_W));
            }
            o.push('\n');
        } else {
            let r = p.reason.as_deref().unwrap_or("not attached");
            let _ = writeln!(o, "  {name:<16} -  unavailable: {}", shorten(r, REASON_W));
        }
    }

    match &report.culprit {
        Some(c) => {
            let line = format!("CULPRIT: {}", c.reason);
            let _ = writeln!(o, "{}", paint(&line, BOLD, color));
        }
        None => {
            let _ = writeln!(
                o,
                "no CFS period-timer callback seen: no cgroup with a cpu quota was busy"
            );
        }
    }

    // Where enqueue_* cannot be probed (tracepoint-only kernels) the tasks made runnable inside
    // the callback are the closest figure: show them in that column, labelled as such.
    let enq_is_runnable = !report.figures.enqueued.available && report.figures.runnable.available;
    if !report.cgroups.is_empty() {
        o.push('\n');
        let _ = writeln!(
            o,
            "{} {} {:>8} {:>8} {:>8} {:>8} {:>11} {:>11} {:>8} {:>7} {:>9}  COMM",
            pad("PATH", PATH_W),
            pad("WORKLOAD", WORKLOAD_W),
            "PERIODS",
            "CB p50",
            "p99",
            "max",
            "UNTHR/P",
            if enq_is_runnable {
                "RUNNABLE/P"
            } else {
                "ENQ/P"
            },
            "CPUS/P",
            "ASYNC",
            "HEADROOM"
        );
        let culprit_id = report.culprit.as_ref().map(|c| c.cgroup.id);
        for c in report.cgroups.iter().take(TOP_CGROUPS) {
            let path = pad(&ellipsize_middle(&display_path(c), PATH_W), PATH_W);
            let wl = workload_label(&c.workload).unwrap_or_else(|| "-".to_string());
            let wl = pad(&ellipsize_middle(&wl, WORKLOAD_W), WORKLOAD_W);
            let hr = format!("{:>9}", headroom_cell(c.headroom_ns));
            let hr = paint(
                &hr,
                RED,
                color && low_headroom(c.headroom_ns, wd.thresh_s, report.highlight_under()),
            );
            let comms = top_comms(&c.processes, 3).join(",");
            let row = format!(
                "{path} {wl} {:>8} {:>8} {:>8} {:>8} {:>11} {:>11} {:>8} {:>7} ",
                c.periods,
                human_ns(c.callback_ns.p50),
                human_ns(c.callback_ns.p99),
                human_ns(c.callback_ns.max),
                p50_max(&c.unthrottled_per_period),
                p50_max(if enq_is_runnable {
                    &c.runnable_per_period
                } else {
                    &c.enqueued_per_period
                }),
                // Distinct CPUs it was unthrottled on per period (p50/max).
                p50_max(&c.spread.as_ref().map(|sp| sp.per_period)),
                // cfs_rqs unthrottled in CSDs on other CPUs (6.3+).
                c.async_unthrottle
                    .as_ref()
                    .map_or_else(|| "-".to_string(), |a| a.unthrottled.to_string()),
            );
            let row = paint(&row, BOLD, color && culprit_id == Some(c.id));
            let _ = writeln!(
                o,
                "{row}{hr}  {}",
                if comms.is_empty() { "-" } else { &comms }
            );
            // Nested quotas: the limits above it, each with its own period timer.
            if let Some(parents) = c.parents.as_ref().filter(|p| !p.is_empty()) {
                let _ = writeln!(o, "  {}", parents_phrase(parents));
            }
        }
        if report.cgroups.len() > TOP_CGROUPS {
            let _ = writeln!(
                o,
                "... {} more cgroups (--json for all)",
                report.cgroups.len() - TOP_CGROUPS
            );
        }
    }

    if let Some(np) = report.precursors.as_ref().filter(|np| {
        np.period_changes > 0
            || np.callbacks_over_period > 0
            || np.multi_pass_callbacks.is_some_and(|n| n > 0)
            || np.kernel_messages > 0
    }) {
        let _ = writeln!(
            o,
            "\nLOCKUP PRECURSORS: {} period change(s) ({} by the kernel, {} written), {} \
             callback(s) at least their period, {} with several distribute passes, {} kernel \
             \"period too short\" message(s)",
            np.period_changes,
            np.period_changes_by_kernel,
            np.period_changes_by_write,
            np.callbacks_over_period,
            np.multi_pass_callbacks
                .map_or_else(|| "n/a".to_string(), |n| n.to_string()),
            np.kernel_messages
        );
        for c in report
            .cgroups
            .iter()
            .filter(|c| c.precursors.as_ref().is_some_and(PrecursorReport::any))
            .take(TOP_CPUS)
        {
            if let Some(p) = &c.precursors {
                let _ = writeln!(
                    o,
                    "  {}: {}",
                    ellipsize_middle(&display_path(c), PATH_W + WORKLOAD_W),
                    precursor_phrase(p)
                );
            }
        }
        for m in &np.unattributed_messages {
            let _ = writeln!(
                o,
                "  (no cgroup matched) cpu{}: period too short, {} (cfs_period_us = {}, \
                 cfs_quota_us = {})",
                m.cpu,
                if m.scaled_up {
                    "scaled up"
                } else {
                    "cannot scale up"
                },
                m.period_us,
                m.quota_us
            );
        }
    }

    if report.cpus.iter().any(|c| c.period_timers > 0) {
        let mut cpus: Vec<&CpuReport> =
            report.cpus.iter().filter(|c| c.period_timers > 0).collect();
        cpus.sort_by(|a, b| b.timer_irq_ns.cmp(&a.timer_irq_ns).then(a.cpu.cmp(&b.cpu)));
        let _ = write!(
            o,
            "\nperiod-timer IRQ time by CPU (top {} of {}):",
            cpus.len().min(TOP_CPUS),
            cpus.len()
        );
        for c in cpus.iter().take(TOP_CPUS) {
            let _ = write!(
                o,
                "  cpu{} {} / {}",
                c.cpu,
                human_ns(c.timer_irq_ns),
                c.period_timers
            );
        }
        o.push('\n');
        // Several timers served by one interrupt: one IRQs-off span longer than any callback.
        if let Some(c) = cpus.iter().max_by_key(|c| c.max_chain_ns)
            && c.max_chain_ns > c.max_callback_ns
        {
            let _ = writeln!(
                o,
                "longest back-to-back callback chain: {} on cpu{}",
                human_ns(c.max_chain_ns),
                c.cpu
            );
        }
    }

    if report.cpus.iter().any(|c| c.irq_spans > 0) {
        let mut cpus: Vec<&CpuReport> = report.cpus.iter().filter(|c| c.irq_spans > 0).collect();
        cpus.sort_by(|a, b| {
            b.max_irq_span_ns
                .cmp(&a.max_irq_span_ns)
                .then(a.cpu.cmp(&b.cpu))
        });
        let _ = write!(
            o,
            "\ntimer interrupts that ran period timers, by CPU (worst span, p50, timers/span, \
             timer share):"
        );
        for c in cpus.iter().take(TOP_CPUS) {
            let _ = write!(
                o,
                "  cpu{} {} p50 {} {:.1}/span {:.0}%",
                c.cpu,
                human_ns(c.max_irq_span_ns.unwrap_or(0)),
                human_ns(c.irq_span_ns.map_or(0, |s| s.p50)),
                c.period_timers_per_span.map_or(0.0, |s| s.mean),
                c.period_timer_share.unwrap_or(0.0) * 100.0
            );
        }
        o.push('\n');
    }

    if report.events.async_csds > 0 {
        let mut cpus: Vec<&CpuReport> = report.cpus.iter().filter(|c| c.async_csds > 0).collect();
        cpus.sort_by(|a, b| b.async_ns.cmp(&a.async_ns).then(a.cpu.cmp(&b.cpu)));
        let n = report.events.async_csds;
        let _ = write!(
            o,
            "\nasync unthrottle (CSD, IRQs off) by CPU: {n} CSD{}",
            if n == 1 { "" } else { "s" }
        );
        if report.events.async_empty > 0 {
            let _ = write!(o, " ({} with nothing to do)", report.events.async_empty);
        }
        let _ = write!(o, ":");
        for c in cpus.iter().take(TOP_CPUS) {
            let _ = write!(
                o,
                "  cpu{} {} / {} (max {})",
                c.cpu,
                human_ns(c.async_ns),
                c.async_csds,
                human_ns(c.max_async_ns)
            );
        }
        o.push('\n');
    }

    if !report.warnings.is_empty() {
        o.push_str("\nwarnings:\n");
        for w in &report.warnings {
            let _ = writeln!(o, "  ! {w}");
        }
    }
    o
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::capture::{AsyncRecord, CgroupRecord, EndRecord, LossRecord, PeriodRecord};
    use crate::model::host::HostFacts;
    use crate::model::workload::WorkloadKind;
    use tracer_ebpf::{ASYNC_LAST, HOW_CGROUP, HOW_FRAME_TRACEPOINT, HOW_PERIOD};

    const YARN: &str = "/yarn/container_e06_1512098667219_988894_01_000020";

    fn status(attached: bool, how: &str, target: &str, reason: Option<&str>) -> ProbeStatus {
        let how = match how {
            "tracepoint" => Style::Tracepoint,
            "kprobe" => Style::Kprobe,
            "fentry" => Style::Fentry,
            "raw_tp" => Style::RawTp,
            "read" => Style::Read,
            _ => Style::None,
        };
        ProbeStatus {
            attached,
            how: attached.then_some(how),
            target: Some(target.to_string()),
            reason: reason.map(str::to_string),
            attempts: Vec::new(),
        }
    }

    fn header() -> CaptureHeader {
        let mut probes = BTreeMap::new();
        probes.insert(
            crate::model::probe::Probe::PeriodTimer,
            status(true, "tracepoint", "hrtimer_expire_entry/exit", None),
        );
        probes.insert(
            crate::model::probe::Probe::Unthrottle,
            status(true, "kprobe", "unthrottle_cfs_rq", None),
        );
        probes.insert(
            crate::model::probe::Probe::Enqueue,
            status(
                false,
                "kprobe",
                "enqueue_entity",
                Some("kprobes are not available (CONFIG_KPROBES off)"),
            ),
        );
        probes.insert(
            crate::model::probe::Probe::Distribute,
            status(
                false,
                "kprobe",
                "distribute_cfs_runtime",
                Some("no kprobes"),
            ),
        );
        probes.insert(
            crate::model::probe::Probe::Runnable,
            status(true, "raw_tp", "sched_update_nr_running_tp", None),
        );
        CaptureHeader {
            schema: capture::CAPTURE_SCHEMA.into(),
            tool_version: "0.1.0".into(),
            host: HostFacts {
                hostname: "node7".into(),
                kernel: "6.18.44".into(),
                ncpus: 48,
                watchdog: WatchdogFacts {
                    thresh_s: Some(10),
                    enabled: true,
                    nmi_watchdog: None,
                    hardlockup_panic: Some(true),
                },
            },
            backend_requested: crate::model::probe::Backend::Auto,
            backend: crate::model::probe::Style::Tracepoint,
            probes,
            cpu_hierarchy: None,
            started_unix_ns: 0,
            started_mono_ns: 0,
            command: None,
        }
    }

    fn yarn_record() -> CgroupRecord {
        CgroupRecord {
            id: 20,
            path: Some(YARN.into()),
            workload: Workload {
                kind: WorkloadKind::Yarn,
                application: Some("application_1512098667219_988894".into()),
                container: Some("container_e06_1512098667219_988894_01_000020".into()),
                pod_uid: None,
                qos: None,
                unit: None,
            },
            processes: vec![
                ProcessInfo {
                    pid: 100,
                    comm: "python".into(),
                    cmdline: None,
                    cpu_ticks: 50,
                },
                ProcessInfo {
                    pid: 101,
                    comm: "python".into(),
                    cmdline: None,
                    cpu_ticks: 40,
                },
            ],
            period_us: Some(100_000),
            quota_us: Some(20_000),
            note: None,
            parents: Some(vec![ParentRecord {
                path: "/yarn".into(),
                id: Some(19),
                period_us: Some(100_000),
                quota_us: Some(50_000),
            }]),
        }
    }

    fn other_record() -> CgroupRecord {
        CgroupRecord {
            id: 30,
            path: Some("/system.slice/cron.service".into()),
            workload: Workload {
                kind: WorkloadKind::Systemd,
                application: None,
                container: None,
                pod_uid: None,
                qos: None,
                unit: Some("cron.service".into()),
            },
            processes: vec![],
            period_us: Some(100_000),
            quota_us: None,
            note: None,
            parents: Some(vec![ParentRecord {
                path: "/system.slice".into(),
                id: Some(29),
                period_us: None,
                quota_us: None,
            }]),
        }
    }

    const FLAGS: u32 = HOW_FRAME_TRACEPOINT | HOW_UNTHROTTLE | HOW_CGROUP | HOW_PERIOD;

    fn rec(cg: u64, cpu: u32, ts: u64, dur: u64, unthr: u32) -> PeriodRecord {
        PeriodRecord {
            ts_ns: ts,
            cpu,
            duration_ns: dur,
            cgroup_id: cg,
            unthrottled: unthr,
            period_ns: 100_000_000,
            quota_ns: 20_000_000,
            flags: FLAGS,
            ..Default::default()
        }
    }

    fn agg() -> Aggregator {
        let mut a = Aggregator::new();
        a.add_cgroup(yarn_record());
        a.add_cgroup(other_record());
        // YARN container: 100 callbacks of 100..=199 us, plus one of 310 us.
        for i in 0..100u64 {
            a.add_period(&rec(
                20,
                (i % 48) as u32,
                i * 100_000_000,
                100_000 + i * 1_000,
                3,
            ));
        }
        a.add_period(&rec(20, 3, 10_000_000_000, 310_000, 48));
        // cron: fewer, shorter.
        for i in 0..10u64 {
            a.add_period(&rec(30, 1, 5 + i * 100_000_000, 2_000, 1));
        }
        // Unresolved: one long callback but little in total... still more than cron.
        a.add_period(&rec(0, 2, 7, 400_000, 0));
        a.set_loss(LossRecord {
            ts_ns: 1,
            ringbuf_full: 2,
            ..Default::default()
        });
        a
    }

    #[test]
    fn culprit_stats_and_order() {
        let r = build_report(&header(), &agg(), 8_000_000_000, vec!["w1".into()]);
        assert_eq!(r.schema, REPORT_SCHEMA);
        assert_eq!(r.duration_s, 8.0);
        assert_eq!(r.events.periods, 112);
        assert_eq!(r.events.lost, 2);
        let ids: Vec<u64> = r.cgroups.iter().map(|c| c.id).collect();
        assert_eq!(ids, vec![20, 0, 30]);
        let c = r.culprit.as_ref().unwrap();
        assert_eq!(c.cgroup.id, 20);
        assert_eq!(c.cgroup.path.as_deref(), Some(YARN));
        assert_eq!(c.cgroup.periods, 101);
        let cb = c.cgroup.callback_ns;
        assert_eq!((cb.count, cb.min, cb.max), (101, 100_000, 310_000));
        assert!((148_000..=152_000).contains(&cb.p50), "{}", cb.p50);
        assert!(cb.p99 >= 198_000 && cb.p99 <= 310_000, "{}", cb.p99);
        assert_eq!(c.cgroup.headroom_ns, Some(10_000_000_000 - 310_000));
        assert_eq!(r.headroom_ns, Some(10_000_000_000 - 400_000));
        assert_eq!(c.cgroup.period_us, Some(100_000));
        assert_eq!(c.cgroup.quota_us, Some(20_000));
        assert_eq!(c.cgroup.kernel_period_us, Some(100_000));
        assert_eq!(c.cgroup.kernel_quota_us, Some(20_000));
        assert_eq!(c.cgroup.cpus.len(), 48);
        let u = c.cgroup.unthrottled_per_period.unwrap();
        assert_eq!((u.p50, u.max), (3, 48));
        assert!(
            c.reason.starts_with(&format!(
                "{YARN} (yarn application_1512098667219_988894): 101 period-timer callbacks \
                 held IRQs off for "
            )),
            "{}",
            c.reason
        );
        assert!(
            c.reason.contains("worst single callback 310 us (p99 "),
            "{}",
            c.reason
        );
        assert!(
            c.reason.contains("3.4 cfs_rqs unthrottled per period"),
            "{}",
            c.reason
        );
        assert!(
            c.reason.ends_with("watchdog headroom 9.9997 s of 10 s"),
            "{}",
            c.reason
        );
        // The unresolved bucket is reported but is not the culprit.
        let unres = &r.cgroups[1];
        assert_eq!(unres.path, None);
        assert!(unres.note.as_deref().unwrap().starts_with(UNRESOLVED_NAME));
        assert_eq!(r.warnings[0], "w1");
        assert!(r.warnings.iter().any(|w| w.contains("2 event(s) lost")));
        let cpu3 = r.cpus.iter().find(|c| c.cpu == 3).unwrap();
        assert_eq!(cpu3.max_callback_ns, 310_000);
        assert_eq!(cpu3.period_timers, 4);
    }

    #[test]
    fn availability_and_reasons() {
        let r = build_report(&header(), &agg(), 1, vec![]);
        let f = &r.figures;
        assert!(f.callback_ns.available);
        assert_eq!(
            f.callback_ns.how.as_deref(),
            Some("tracepoint hrtimer_expire_entry/exit")
        );
        assert!(f.unthrottled.available);
        assert_eq!(
            f.unthrottled.how.as_deref(),
            Some("kprobe unthrottle_cfs_rq")
        );
        assert_eq!(f.unthrottled.reason, None);
        assert!(!f.enqueued.available);
        assert_eq!(
            f.enqueued.reason.as_deref(),
            Some("kprobes are not available (CONFIG_KPROBES off)")
        );
        assert!(!f.loops.available);
        assert_eq!(f.loops.reason.as_deref(), Some("no kprobes"));
        // Attached, but no event said it counted.
        assert!(!f.runnable.available);
        assert_eq!(
            f.runnable.reason.as_deref(),
            Some("probe attached, but no event carried its count")
        );
        for c in &r.cgroups {
            assert!(c.unthrottled_per_period.is_some());
            assert!(c.enqueued_per_period.is_none());
            assert!(c.runnable_per_period.is_none());
            assert!(c.max_loops.is_none());
        }
    }

    #[test]
    fn no_count_figures_without_their_flags() {
        let mut a = Aggregator::new();
        let mut p = rec(20, 0, 0, 5_000, 9);
        p.flags = HOW_FRAME_TRACEPOINT;
        a.add_period(&p);
        let r = build_report(&header(), &a, 1, vec![]);
        assert!(!r.figures.unthrottled.available);
        let c = &r.cgroups[0];
        assert_eq!(c.unthrottled_per_period, None);
        // Never named: kind cgroup, no path, a note.
        assert_eq!(c.path, None);
        assert_eq!(c.workload.kind, WorkloadKind::Cgroup);
        assert!(c.note.as_deref().unwrap().contains("never named"));
        let v = serde_json::to_value(&r).unwrap();
        assert!(v["cgroups"][0]["unthrottled_per_period"].is_null());
        assert!(!r.culprit.as_ref().unwrap().reason.contains("unthrottled"));
    }

    #[test]
    fn no_periods_no_culprit() {
        let r = build_report(&header(), &Aggregator::new(), 1_000_000_000, vec![]);
        assert!(r.culprit.is_none());
        assert!(r.headroom_ns.is_none());
        assert!(r.cgroups.is_empty());
        let v = serde_json::to_value(&r).unwrap();
        assert!(v["culprit"].is_null());
        assert!(render_text(&r, false).contains("no CFS period-timer callback seen"));
    }

    #[test]
    fn only_unresolved_can_be_the_culprit() {
        let mut a = Aggregator::new();
        a.add_period(&rec(0, 0, 0, 5_000, 1));
        let r = build_report(&header(), &a, 1, vec![]);
        let c = r.culprit.unwrap();
        assert_eq!(c.cgroup.id, 0);
        assert!(c.reason.starts_with(UNRESOLVED_NAME), "{}", c.reason);
    }

    #[test]
    fn json_field_names_follow_the_contract() {
        let r = build_report(&header(), &agg(), 8_000_000_000, vec![]);
        let v = serde_json::to_value(&r).unwrap();
        for k in [
            "schema",
            "tool_version",
            "hostname",
            "kernel",
            "ncpus",
            "backend",
            "backend_requested",
            "probes",
            "watchdog",
            "duration_s",
            "events",
            "figures",
            "cgroups",
            "cpus",
            "headroom_ns",
            "culprit",
            "warnings",
            "headroom_basis",
            "worst_irqs_off",
            "precursors",
            "headroom_alert",
        ] {
            assert!(v.get(k).is_some(), "missing {k}");
        }
        for k in ["under_pct", "headroom_pct", "alert"] {
            assert!(v["headroom_alert"].get(k).is_some(), "headroom_alert.{k}");
        }
        for k in ["irq_span", "spread", "kernel_messages"] {
            assert!(v["figures"][k]["available"].is_boolean(), "figures.{k}");
        }
        for k in [
            "irq_spans",
            "periods_in_span",
            "span_unmatched_exit",
            "span_missed_exit",
        ] {
            assert!(v["events"][k].is_number(), "events.{k}");
        }
        for k in [
            "irq_span_ns",
            "max_irq_span_ns",
            "period_timers_per_span",
            "period_timer_share",
            "headroom_ns",
            "headroom_basis",
        ] {
            assert!(v["cpus"][0].get(k).is_some(), "cpus[].{k}");
        }
        for k in [
            "headroom_basis",
            "worst_irq_span",
            "spread",
            "precursors",
            "parents",
        ] {
            assert!(v["cgroups"][0].get(k).is_some(), "cgroups[].{k}");
        }
        for k in [
            "period_changes",
            "callbacks_over_period",
            "multi_pass_callbacks",
            "kernel_messages",
        ] {
            assert!(
                v["cgroups"][0]["precursors"].get(k).is_some(),
                "precursors.{k}"
            );
        }
        assert_eq!(v["schema"], "cfstrace.report/1");
        assert_eq!(v["ncpus"], 48);
        assert_eq!(v["watchdog"]["thresh_s"], 10);
        assert_eq!(v["watchdog"]["enabled"], true);
        assert_eq!(v["events"]["periods"], 112);
        assert_eq!(v["events"]["lost"], 2);
        for k in [
            "ringbuf_full",
            "unmatched_exit",
            "missed_exit",
            "cgroup_read",
        ] {
            assert!(v["events"].get(k).is_some(), "events.{k}");
        }
        for k in [
            "callback_ns",
            "loops",
            "unthrottled",
            "enqueued",
            "runnable",
        ] {
            let f = &v["figures"][k];
            assert!(f["available"].is_boolean(), "figures.{k}");
            assert!(f.get("how").is_some() && f.get("reason").is_some());
        }
        assert_eq!(v["probes"]["period_timer"]["how"], "tracepoint");
        let c = &v["cgroups"][0];
        assert_eq!(c["id"], 20);
        assert_eq!(c["path"], YARN);
        assert_eq!(c["workload"]["kind"], "yarn");
        assert_eq!(
            c["workload"]["application"],
            "application_1512098667219_988894"
        );
        assert_eq!(c["processes"][0]["pid"], 100);
        assert_eq!(c["processes"][0]["comm"], "python");
        assert_eq!(c["period_us"], 100_000);
        assert_eq!(c["quota_us"], 20_000);
        assert_eq!(c["periods"], 101);
        for k in ["count", "min", "p50", "p90", "p99", "max", "mean"] {
            assert!(c["callback_ns"][k].is_number(), "callback_ns.{k}");
            assert!(
                c["unthrottled_per_period"][k].is_number(),
                "unthrottled.{k}"
            );
        }
        assert!(c["enqueued_per_period"].is_null());
        assert!(c["max_loops"].is_null());
        assert!(c.get("runnable_per_period").is_some());
        assert_eq!(c["headroom_ns"], 10_000_000_000i64 - 310_000);
        assert!(c["cpus"].is_array());
        let cpu = &v["cpus"][0];
        for k in ["cpu", "period_timers", "timer_irq_ns", "max_callback_ns"] {
            assert!(cpu[k].is_number(), "cpus[].{k}");
        }
        // The culprit is the cgroup record, flattened, plus its reason.
        assert_eq!(v["culprit"]["id"], 20);
        assert_eq!(v["culprit"]["path"], YARN);
        assert!(v["culprit"]["callback_ns"]["p99"].is_number());
        assert!(v["culprit"]["reason"].as_str().unwrap().contains(YARN));
        // And it reads back.
        let back: Report = serde_json::from_value(v).unwrap();
        assert_eq!(back, r);
    }

    fn async_rec(cg: u64, cpu: u32, csd_ts: u64, dur: u64, flags: u32) -> AsyncRecord {
        AsyncRecord {
            ts_ns: csd_ts,
            cpu,
            duration_ns: dur,
            cgroup_id: cg,
            csd_ts_ns: csd_ts,
            csd_ns: dur,
            segment: 0,
            unthrottled: 1,
            enqueued: 0,
            runnable: 2,
            flags: flags | ASYNC_LAST,
        }
    }

    /// The header of a tracepoint-only 6.3+ host: the CSD frame on the csd tracepoints, cgroups
    /// listed from the rq's CSD list.
    fn async_header() -> CaptureHeader {
        let mut h = header();
        h.probes.insert(
            Probe::AsyncUnthrottle,
            status(
                true,
                "tracepoint",
                "csd_function_entry/exit (raw_tp) filtered on __cfsb_csd_unthrottle",
                Some("unthrottle_cfs_rq is not probed here: cgroups are listed"),
            ),
        );
        h
    }

    fn async_agg() -> Aggregator {
        let mut a = agg();
        let listed = HOW_FRAME_TRACEPOINT | ASYNC_LISTED | HOW_RUNNABLE | HOW_CGROUP;
        // The YARN container's cfs_rqs on CPUs 1 and 2 unthrottled in CSDs there.
        for i in 0..10u64 {
            a.add_async(&async_rec(
                20,
                1 + (i % 2) as u32,
                1_000 + i * 100_000,
                3_000 + i,
                listed,
            ));
        }
        a
    }

    #[test]
    fn async_unthrottle_in_the_json() {
        let r = build_report(&async_header(), &async_agg(), 8_000_000_000, vec![]);
        let v = serde_json::to_value(&r).unwrap();
        let f = &v["figures"]["async_unthrottle"];
        assert_eq!(f["available"], true);
        assert_eq!(
            f["how"],
            "tracepoint csd_function_entry/exit (raw_tp) filtered on __cfsb_csd_unthrottle"
        );
        assert_eq!(v["events"]["async_unthrottle"], 10);
        assert_eq!(v["events"]["async_csds"], 10);
        for k in ["async_empty", "csd_unmatched_exit", "csd_missed_exit"] {
            assert!(v["events"][k].is_number(), "events.{k}");
        }
        let c = &v["cgroups"][0];
        assert_eq!(c["id"], 20);
        let a = &c["async_unthrottle"];
        assert_eq!(a["csds"], 10);
        assert_eq!(a["unthrottled"], 10);
        assert_eq!(a["cpus"], serde_json::json!([1, 2]));
        assert_eq!(a["total_ns"], (0..10).map(|i| 3_000 + i).sum::<u64>());
        assert_eq!(a["attribution"], "listed");
        assert_eq!(a["runnable"], 20);
        assert!(a["enqueued"].is_null());
        for k in ["count", "min", "p50", "p90", "p99", "max", "mean"] {
            assert!(a["per_csd_ns"][k].is_number(), "per_csd_ns.{k}");
        }
        assert_eq!(a["per_csd_ns"]["max"], 3_009);
        // Cgroups without async work say null.
        assert!(v["cgroups"][2]["async_unthrottle"].is_null());
        // Per CPU: the CSDs, also on CPUs whose timers did not fire.
        let cpu2 = r.cpus.iter().find(|c| c.cpu == 2).unwrap();
        assert_eq!((cpu2.async_csds, cpu2.max_async_ns), (5, 3_009));
        for k in ["async_csds", "async_ns", "max_async_ns"] {
            assert!(v["cpus"][0][k].is_number(), "cpus[].{k}");
        }
        let reason = v["culprit"]["reason"].as_str().unwrap();
        assert!(
            reason.contains(
                "3.4 cfs_rqs unthrottled per period + 10 cfs_rqs unthrottled asynchronously \
                 on 2 CPUs (10 CSDs, worst 3.01 us); watchdog headroom"
            ),
            "{reason}"
        );
        assert_eq!(v["culprit"]["async_unthrottle"]["csds"], 10);
        let back: Report = serde_json::from_value(v).unwrap();
        assert_eq!(back, r);
        let t = render_text(&r, false);
        assert!(t.contains("  ASYNC  HEADROOM"), "{t}");
        assert!(
            t.contains("async unthrottle (CSD, IRQs off) by CPU: 10 CSDs:  cpu2 15.0 us / 5 (max 3.01 us)  cpu1 "),
            "{t}"
        );
        assert!(
            t.contains("  async_unthrottle tracepoint csd_function_entry/exit"),
            "{t}"
        );
    }

    #[test]
    fn async_unthrottle_unavailable_or_absent() {
        // Pre-6.3: the probe says why; no cgroup has the figure.
        let mut h = header();
        h.probes.insert(
            Probe::AsyncUnthrottle,
            status(
                false,
                "",
                "__cfsb_csd_unthrottle",
                Some("__cfsb_csd_unthrottle is not in /proc/kallsyms: this kernel unthrottles remote cfs_rqs inside the period timer (pre-6.3)"),
            ),
        );
        let r = build_report(&h, &agg(), 1, vec![]);
        let f = &r.figures.async_unthrottle;
        assert!(!f.available);
        assert!(f.reason.as_deref().unwrap().contains("pre-6.3"), "{f:?}");
        assert!(r.cgroups.iter().all(|c| c.async_unthrottle.is_none()));
        assert!(!r.culprit.unwrap().reason.contains("asynchronously"));
        // Attached, but every unthrottle stayed on the timer's CPU.
        let r = build_report(&async_header(), &agg(), 1, vec![]);
        assert!(r.figures.async_unthrottle.available);
        assert!(
            r.figures
                .async_unthrottle
                .reason
                .as_deref()
                .unwrap()
                .starts_with("no CSD ran"),
            "{:?}",
            r.figures.async_unthrottle
        );
        // A capture from before this probe existed.
        let r = build_report(&header(), &agg(), 1, vec![]);
        let reason = r.figures.async_unthrottle.reason.clone().unwrap();
        assert!(reason.contains("older cfstrace"), "{reason}");
        // A report JSON from before the async fields still reads.
        let mut v = serde_json::to_value(&r).unwrap();
        v["figures"]
            .as_object_mut()
            .unwrap()
            .remove("async_unthrottle");
        v["events"].as_object_mut().unwrap().remove("async_csds");
        v["cgroups"][0]
            .as_object_mut()
            .unwrap()
            .remove("async_unthrottle");
        v["cpus"][0].as_object_mut().unwrap().remove("async_ns");
        let back: Report = serde_json::from_value(v).unwrap();
        assert_eq!(back.cgroups[0].async_unthrottle, None);
    }

    #[test]
    fn text_names_the_culprit() {
        let r = build_report(&header(), &agg(), 8_000_000_000, vec![]);
        let t = render_text(&r, false);
        assert!(t.contains("CULPRIT: /yarn/container_e06"), "{t}");
        assert!(t.contains("yarn appl…"), "{t}");
        assert!(t.contains("…12098667219_988894 "), "{t}");
        assert!(t.contains("kernel 6.18.44"), "{t}");
        assert!(
            t.contains("  period_timer     tracepoint hrtimer_expire_entry/exit\n"),
            "{t}"
        );
        assert!(
            t.contains("  enqueue          -  unavailable: kprobes are not available"),
            "{t}"
        );
        assert!(t.contains("systemd cron.service"), "{t}");
        assert!(t.contains(UNRESOLVED_NAME), "{t}");
        assert!(t.contains("python"), "{t}");
        assert!(!t.contains('\x1b'), "no colour when asked for none");
        // The path column fits the table (the YARN path is 48 chars or fewer here).
        let colored = render_text(&r, true);
        assert!(colored.contains("\x1b[1mCULPRIT: "), "{colored}");
    }

    #[test]
    fn low_headroom_is_red() {
        let mut a = Aggregator::new();
        a.add_cgroup(yarn_record());
        a.add_period(&rec(20, 0, 0, 9_500_000_000, 1));
        let r = build_report(&header(), &a, 1, vec![]);
        assert_eq!(r.headroom_ns, Some(500_000_000));
        let t = render_text(&r, true);
        assert!(t.contains(RED), "{t}");
        assert!(
            r.culprit
                .unwrap()
                .reason
                .ends_with("watchdog headroom 0.5 s of 10 s")
        );
    }

    #[test]
    fn parents_in_the_json_and_the_text() {
        let r = build_report(&header(), &agg(), 8_000_000_000, vec![]);
        let v = serde_json::to_value(&r).unwrap();
        let c = &v["cgroups"][0];
        assert_eq!(c["path"], YARN);
        assert_eq!(
            c["parents"],
            serde_json::json!([{"path": "/yarn", "id": 19, "period_us": 100_000, "quota_us": 50_000}])
        );
        let cron = v["cgroups"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["id"] == 30)
            .unwrap();
        assert_eq!(cron["parents"][0]["path"], "/system.slice");
        assert!(cron["parents"][0]["quota_us"].is_null());
        assert!(cron["parents"][0]["period_us"].is_null());
        // Never named: unknown, not "top level".
        let unresolved = v["cgroups"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["id"] == 0)
            .unwrap();
        assert!(unresolved["parents"].is_null());
        let t = render_text(&r, false);
        assert!(
            t.contains("\n  under /yarn (quota 50ms/100ms) <- /\n"),
            "{t}"
        );
        assert!(t.contains("\n  under /system.slice <- /\n"), "{t}");
        // A report from before `parents` and `headroom_alert` still reads.
        let mut old = v.clone();
        old.as_object_mut().unwrap().remove("headroom_alert");
        for c in old["cgroups"].as_array_mut().unwrap() {
            c.as_object_mut().unwrap().remove("parents");
        }
        old["culprit"].as_object_mut().unwrap().remove("parents");
        let back: Report = serde_json::from_value(old).unwrap();
        assert!(back.cgroups.iter().all(|c| c.parents.is_none()));
        assert_eq!(back.headroom_alert, None);
        assert_eq!(back.highlight_under(), DEFAULT_HIGHLIGHT_PCT);
    }

    #[test]
    fn parent_phrases() {
        let p = |path: &str, q: Option<(u64, u64)>| ParentRecord {
            path: path.into(),
            id: None,
            period_us: q.map(|q| q.1),
            quota_us: q.map(|q| q.0),
        };
        assert_eq!(parents_phrase(&[]), "under /");
        assert_eq!(
            parents_phrase(&[p("/a", Some((20_000, 100_000)))]),
            "under /a (quota 20ms/100ms) <- /"
        );
        assert_eq!(
            parents_phrase(&[p("/a/b", None), p("/a", Some((1_500, 10_000)))]),
            "under /a/b <- /a (quota 1.5ms/10ms) <- /"
        );
        // Cut at MAX_PARENTS: the farthest kept is not top level.
        assert_eq!(
            parents_phrase(&[p("/x/y/z", Some((500, 1_000))), p("/x/y", None)]),
            "under /x/y/z (quota 500us/1ms) <- /x/y <- … <- /"
        );
        assert_eq!(us_short(100_000), "100ms");
        assert_eq!(us_short(2_250), "2.25ms");
        assert_eq!(us_short(999), "999us");
    }

    #[test]
    fn highlight_threshold() {
        // Node headroom 10 s - the 400 us worst callback: 99.996 %.
        let mut r = build_report(&header(), &agg(), 8_000_000_000, vec![]);
        let a = r.headroom_alert.clone().expect("always judged");
        assert_eq!(a.under_pct, DEFAULT_HIGHLIGHT_PCT);
        assert_eq!(a.headroom_pct, Some(99.996));
        assert!(!a.alert);
        assert_eq!(a.reason, None);
        let t = render_text(&r, true);
        assert!(!t.contains("HEADROOM ALERT"), "{t}");
        assert!(!t.contains(RED), "{t}");
        // Headroom is always below 100 % of the threshold.
        r.set_highlight_under(100.0);
        let a = r.headroom_alert.clone().unwrap();
        assert!(a.alert);
        assert_eq!(a.under_pct, 100.0);
        assert_eq!(
            a.headroom_pct.unwrap(),
            crate::analysis::headroom::headroom_pct(&r).unwrap()
        );
        let v = serde_json::to_value(&r).unwrap();
        assert_eq!(v["headroom_alert"]["alert"], true);
        assert_eq!(v["headroom_alert"]["under_pct"], 100.0);
        assert_eq!(v["headroom_alert"]["headroom_pct"], 99.996);
        let plain = render_text(&r, false);
        assert!(
            plain.contains(
                "\n!! HEADROOM ALERT: node headroom 99.9960% of watchdog_thresh (10 s) is below \
                 100% (--highlight-under)\n"
            ),
            "{plain}"
        );
        assert!(!plain.contains('\x1b'), "{plain}");
        let colored = render_text(&r, true);
        assert!(colored.contains("\x1b[1;31m!! HEADROOM ALERT"), "{colored}");
        // The node and per-cgroup headroom cells turn red at the same threshold.
        assert!(
            colored.contains(&format!("{RED}9.9996 s{RESET}")),
            "{colored}"
        );
        // 0 %: never (headroom is never negative percent here).
        r.set_highlight_under(0.0);
        assert!(!r.headroom_alert.as_ref().unwrap().alert);
        assert!(!render_text(&r, true).contains("HEADROOM ALERT"));
        // Consistent with --fail-under at the same percentage.
        for pct in [0.0, 50.0, 99.99, 99.996, 99.997, 100.0] {
            r.set_highlight_under(pct);
            let alert = r.headroom_alert.as_ref().unwrap().alert;
            let fails = matches!(
                crate::analysis::headroom::judge(&r, pct),
                crate::analysis::headroom::Verdict::Fail { .. }
            );
            assert_eq!(alert, fails, "{pct}");
        }
        // Unknown threshold: no alert, and why.
        let mut h = header();
        h.host.watchdog.thresh_s = None;
        let r = build_report(&h, &agg(), 8_000_000_000, vec![]);
        let a = r.headroom_alert.unwrap();
        assert_eq!((a.alert, a.headroom_pct), (false, None));
        assert!(a.reason.unwrap().contains("watchdog_thresh"));
        // No callbacks: the same.
        let r = build_report(&header(), &Aggregator::new(), 1, vec![]);
        let a = r.headroom_alert.unwrap();
        assert_eq!((a.alert, a.headroom_pct), (false, None));
    }

    #[test]
    fn human_units() {
        assert_eq!(human_ns(0), "0 ns");
        assert_eq!(human_ns(812), "812 ns");
        assert_eq!(human_ns(1_250), "1.25 us");
        assert_eq!(human_ns(41_200), "41.2 us");
        assert_eq!(human_ns(310_000), "310 us");
        assert_eq!(human_ns(999_700), "1.00 ms");
        assert_eq!(human_ns(41_200_000), "41.2 ms");
        assert_eq!(human_ns(12_345_000_000), "12.3 s");
    }

    #[test]
    fn ellipsis_keeps_both_ends() {
        let p = "/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod1234.slice/cri-containerd-abcdef.scope";
        let e = ellipsize_middle(p, 48);
        assert_eq!(e.chars().count(), 48);
        assert!(
            e.starts_with("/kubepods.slice") && e.ends_with("/cri-containerd-abcdef.scope"),
            "{e}"
        );
        assert_eq!(ellipsize_middle("/a", 48), "/a");
    }

    #[test]
    fn from_a_capture_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.jsonl");
        let f = std::fs::File::create(&path).unwrap();
        let mut w = capture::CaptureWriter::new(f, &header()).unwrap();
        w.write_line(&capture::CaptureLine::Cgroup(yarn_record()))
            .unwrap();
        w.write_line(&capture::CaptureLine::Period(rec(20, 1, 1_000, 50_000, 2)))
            .unwrap();
        w.write_line(&capture::CaptureLine::End(EndRecord {
            ts_ns: 9,
            duration_ns: 2_000_000_000,
            reason: crate::model::probe::StopReason::Duration,
            periods: 1,
            lost: 0,
            command_status: None,
            async_unthrottle: 0,
            irq_spans: 0,
            kmsg_period_scaling: 0,
        }))
        .unwrap();
        w.flush().unwrap();
        drop(w);
        let r = report_from_capture(&path).unwrap();
        assert_eq!(r.duration_s, 2.0);
        assert_eq!(r.culprit.unwrap().cgroup.path.as_deref(), Some(YARN));
        assert!(r.warnings.is_empty(), "{:?}", r.warnings);

        // Without an end line: duration from the callbacks, and a warning.
        let f = std::fs::File::create(&path).unwrap();
        let mut w = capture::CaptureWriter::new(f, &header()).unwrap();
        w.write_line(&capture::CaptureLine::Period(rec(20, 1, 1_000, 50_000, 2)))
            .unwrap();
        w.write_line(&capture::CaptureLine::Period(rec(
            20, 1, 101_000, 50_000, 2,
        )))
        .unwrap();
        drop(w);
        let r = report_from_capture(&path).unwrap();
        assert!(
            (r.duration_s - 150_000e-9).abs() < 1e-12,
            "{}",
            r.duration_s
        );
        assert!(r.warnings.iter().any(|w| w.contains("no end line")));
    }

    fn irq_header() -> CaptureHeader {
        let mut h = header();
        h.probes.insert(
            Probe::IrqSpan,
            status(
                true,
                "tracepoint",
                "local_timer_entry/exit (raw_tp, irq_vectors)",
                None,
            ),
        );
        h
    }

    fn in_span(mut p: PeriodRecord, span_ts: u64) -> PeriodRecord {
        p.flags |= tracer_ebpf::HOW_IN_SPAN;
        p.span_ts_ns = span_ts;
        p
    }

    /// `agg()` plus one timer interrupt on cpu3 that ran the YARN container's worst callback
    /// and cron's.
    fn span_agg() -> Aggregator {
        let mut a = agg();
        a.add_period(&in_span(
            rec(20, 3, 20_000_000_100, 310_000, 48),
            20_000_000_000,
        ));
        a.add_period(&in_span(
            rec(30, 3, 20_000_320_000, 2_000, 1),
            20_000_000_000,
        ));
        a.add_irq_span(&crate::capture::IrqSpanRecord {
            ts_ns: 20_000_000_000,
            cpu: 3,
            duration_ns: 500_000,
            timers: 2,
            timers_ns: 312_000,
            flags: HOW_FRAME_TRACEPOINT,
        });
        a
    }

    #[test]
    fn irq_spans_set_the_headroom() {
        let r = build_report(&irq_header(), &span_agg(), 8_000_000_000, vec![]);
        assert_eq!(r.headroom_ns, Some(10_000_000_000 - 500_000));
        assert_eq!(r.headroom_basis.as_deref(), Some(BASIS_SPAN));
        let w = r.worst_irqs_off.clone().unwrap();
        assert_eq!(
            (w.cpu, w.duration_ns, w.period_timers, w.period_timers_ns),
            (3, 500_000, Some(2), Some(312_000))
        );
        assert!(r.figures.irq_span.available);
        assert_eq!(r.events.irq_spans, 1);
        assert_eq!(r.events.periods_in_span, 2);
        let cpu3 = r.cpus.iter().find(|c| c.cpu == 3).unwrap();
        assert_eq!(cpu3.max_irq_span_ns, Some(500_000));
        assert_eq!(
            cpu3.worst_irq_span.map(|w| (w.ts_ns, w.timers)),
            Some((20_000_000_000, 2))
        );
        assert_eq!(cpu3.irq_span_ns.unwrap().count, 1);
        assert_eq!(cpu3.period_timers_per_span.unwrap().max, 2);
        assert!((cpu3.period_timer_share.unwrap() - 0.624).abs() < 1e-9);
        assert_eq!(cpu3.headroom_ns, Some(10_000_000_000 - 500_000));
        assert_eq!(cpu3.headroom_basis.as_deref(), Some(BASIS_SPAN));
        // A CPU without spans: its worst callback.
        let cpu2 = r.cpus.iter().find(|c| c.cpu == 2).unwrap();
        assert_eq!(cpu2.irq_span_ns, None);
        assert_eq!(cpu2.headroom_basis.as_deref(), Some(BASIS_CALLBACK));
        assert_eq!(cpu2.headroom_ns, Some(10_000_000_000 - 400_000));
        let c = r.culprit.as_ref().unwrap();
        assert_eq!(c.cgroup.id, 20);
        assert_eq!(c.cgroup.headroom_ns, Some(10_000_000_000 - 500_000));
        assert_eq!(c.cgroup.headroom_basis.as_deref(), Some(BASIS_SPAN));
        let ws = c.cgroup.worst_irq_span.unwrap();
        assert_eq!(
            (ws.own_ns, ws.own_timers, ws.period_timers),
            (310_000, 1, 2)
        );
        assert!(
            c.reason.contains(
                "its timers took 310 us of the worst 500 us timer-interrupt span on cpu3 \
                 (2 period timers in it); watchdog headroom 9.9995 s of 10 s"
            ),
            "{}",
            c.reason
        );
        // cron's own headroom is the span it shared, not its 2 us callback.
        let cron = r.cgroups.iter().find(|c| c.id == 30).unwrap();
        assert_eq!(cron.headroom_ns, Some(10_000_000_000 - 500_000));
        let t = render_text(&r, false);
        assert!(
            t.contains("node headroom 9.9995 s (worst timer interrupt 500 us on cpu3: 2 period timers took 312 us)"),
            "{t}"
        );
        assert!(t.contains("  cpu3 500 us p50 500 us 2.0/span 62%"), "{t}");
        assert!(
            t.contains("  irq_span         tracepoint local_timer_entry/exit"),
            "{t}"
        );
        let v = serde_json::to_value(&r).unwrap();
        assert_eq!(v["headroom_basis"], "irq_span");
        assert_eq!(
            v["cpus"]
                .as_array()
                .unwrap()
                .iter()
                .filter(|c| c["irq_spans"] == 1)
                .count(),
            1
        );
        let back: Report = serde_json::from_value(v).unwrap();
        assert_eq!(back, r);
    }

    #[test]
    fn headroom_basis_without_spans() {
        // No span probe in the capture: the worst callback (the unresolved one, cpu2).
        let r = build_report(&header(), &agg(), 1, vec![]);
        assert_eq!(r.headroom_basis.as_deref(), Some(BASIS_CALLBACK));
        assert_eq!(r.worst_irqs_off.as_ref().unwrap().cpu, 2);
        assert!(!r.figures.irq_span.available);
        assert!(
            r.figures
                .irq_span
                .reason
                .as_deref()
                .unwrap()
                .contains("older cfstrace"),
            "{:?}",
            r.figures.irq_span
        );
        assert!(r.cgroups.iter().all(|c| c.worst_irq_span.is_none()));
        assert_eq!(r.cgroups[0].headroom_basis.as_deref(), Some(BASIS_CALLBACK));
        // A CSD longer than any callback: the node's headroom is the CSD's.
        let mut a = async_agg();
        let mut big = async_rec(20, 5, 99_000, 450_000, HOW_FRAME_TRACEPOINT);
        big.csd_ns = 450_000;
        a.add_async(&big);
        let r = build_report(&async_header(), &a, 1, vec![]);
        assert_eq!(r.headroom_basis.as_deref(), Some(BASIS_CSD));
        assert_eq!(r.headroom_ns, Some(10_000_000_000 - 450_000));
        assert!(render_text(&r, false).contains("(worst async-unthrottle CSD 450 us on cpu5)"));
        // Attached, but no callback ran inside a traced interrupt.
        let r = build_report(&irq_header(), &agg(), 1, vec![]);
        assert!(r.figures.irq_span.available);
        assert!(
            r.figures
                .irq_span
                .reason
                .as_deref()
                .unwrap()
                .contains("low-resolution"),
            "{:?}",
            r.figures.irq_span
        );
        // A report JSON from before spans still reads.
        let mut v = serde_json::to_value(&r).unwrap();
        for k in ["headroom_basis", "worst_irqs_off", "precursors"] {
            v.as_object_mut().unwrap().remove(k);
        }
        v["cpus"][0].as_object_mut().unwrap().remove("irq_span_ns");
        v["cgroups"][0].as_object_mut().unwrap().remove("spread");
        let back: Report = serde_json::from_value(v).unwrap();
        assert_eq!(back.headroom_basis, None);
    }

    #[test]
    fn spread_like_runq_g() {
        let mut a = Aggregator::new();
        a.add_cgroup(yarn_record());
        // 48 CPUs; the container was throttled on 46 of them in its worst period.
        for (i, list) in ["0-45", "0-39", "2-41", "0-39,47"].iter().enumerate() {
            let mut p = rec(20, 3, i as u64 * 100_000_000, 200_000, 46);
            p.flags |= HOW_SPREAD;
            p.spread_cpus = crate::model::cpuset::CpuSet::parse_list(list).unwrap();
            a.add_period(&p);
        }
        let r = build_report(&header(), &a, 1, vec![]);
        assert!(r.figures.spread.available);
        assert_eq!(
            r.figures.spread.how.as_deref(),
            Some("unthrottle_cfs_rq inside the callback (cfs_rq->rq->cpu)")
        );
        let sp = r.cgroups[0].spread.clone().unwrap();
        assert_eq!(
            (sp.per_period.max, sp.per_period.min, sp.per_period.count),
            (46, 40, 4)
        );
        assert_eq!(sp.ncpus, 47);
        assert_eq!(sp.cpus.len(), 47);
        assert_eq!(sp.sources, vec!["unthrottle_cfs_rq".to_string()]);
        assert_eq!(
            sp.summary,
            "throttled on 46 of 48 CPUs in one period (typically 40; 47 over the run)"
        );
        let reason = &r.culprit.as_ref().unwrap().reason;
        assert!(
            reason.contains("; throttled on 46 of 48 CPUs in one period"),
            "{reason}"
        );
        let v = serde_json::to_value(&r).unwrap();
        for k in ["per_period", "cpus", "ncpus", "summary", "sources"] {
            assert!(v["cgroups"][0]["spread"].get(k).is_some(), "spread.{k}");
        }
        assert!(
            render_text(&r, false).contains("   40/46 "),
            "{}",
            render_text(&r, false)
        );

        // The probe counted but the BTF gave no CPUs, and no CSD frame: unavailable, said why.
        let r = build_report(&header(), &agg(), 1, vec![]);
        assert!(!r.figures.spread.available);
        assert!(
            r.figures
                .spread
                .reason
                .as_deref()
                .unwrap()
                .contains("lacks cfs_rq.rq or rq.cpu"),
            "{:?}",
            r.figures.spread
        );
        assert!(r.cgroups.iter().all(|c| c.spread.is_none()));
        // Tracepoint-only 6.3+: the CSDs' CPUs, with the caveat.
        let r = build_report(&async_header(), &async_agg(), 1, vec![]);
        assert!(r.figures.spread.available);
        assert!(
            r.figures
                .spread
                .reason
                .as_deref()
                .unwrap()
                .contains("covers the remote CPUs")
        );
        let sp = r.cgroups[0].spread.clone().unwrap();
        assert_eq!(sp.sources, vec!["async_csd".to_string()]);
        assert_eq!(sp.cpus, vec![1, 2]);
    }

    #[test]
    fn precursors_say_who_changed_the_period() {
        let mut h = header();
        h.probes
            .insert(Probe::Kmsg, status(true, "read", "/dev/kmsg", None));
        let mut a = Aggregator::new();
        a.add_cgroup(yarn_record());
        let mut cron = other_record();
        cron.period_us = Some(50_000);
        a.add_cgroup(cron);
        let mk = |cg, ts, dur, period_ns: u64, quota_ns| {
            let mut p = rec(cg, 1, ts, dur, 1);
            p.period_ns = period_ns;
            p.quota_ns = quota_ns;
            p
        };
        // YARN: a callback overruns its 1 ms period, the kernel doubles it (and says so).
        a.add_period(&mk(20, 1_000_000_000, 1_500_000, 1_000_000, 500_000));
        a.add_period(&mk(20, 1_010_000_000, 50_000, 2_000_000, 1_000_000));
        a.add_kmsg(PeriodScaling {
            ts_us: 1_002_000,
            cpu: 1,
            scaled_up: true,
            period_us: 2_000,
            quota_us: 1_000,
        });
        // cron: someone wrote 50 ms; then 70 ms, which its file never showed.
        a.add_period(&mk(30, 1_000_000_000, 2_000, 100_000_000, 20_000_000));
        a.add_period(&mk(30, 2_000_000_000, 2_000, 50_000_000, 10_000_000));
        a.add_period(&mk(30, 3_000_000_000, 2_000, 70_000_000, 10_000_000));
        // A message about a timer nobody saw.
        a.add_kmsg(PeriodScaling {
            ts_us: 9,
            cpu: 7,
            scaled_up: false,
            period_us: 1_000_000,
            quota_us: 1,
        });
        let r = build_report(&h, &a, 1, vec![]);
        assert!(r.figures.kernel_messages.available);
        let y = r.cgroups.iter().find(|c| c.id == 20).unwrap();
        let p = y.precursors.clone().unwrap();
        assert_eq!(p.callbacks_over_period, 1);
        assert_eq!(
            p.multi_pass_callbacks, None,
            "loops are unavailable in this header"
        );
        assert_eq!(p.period_changes.len(), 1);
        let c = &p.period_changes[0];
        assert_eq!(
            (
                c.from_us,
                c.to_us,
                c.from_quota_us,
                c.to_quota_us,
                c.by.as_str()
            ),
            (1_000, 2_000, Some(500), Some(1_000), "kernel")
        );
        assert!(
            c.evidence.contains("scaling up (new cfs_period_us = 2000"),
            "{}",
            c.evidence
        );
        assert_eq!(p.kernel_messages.len(), 1);
        let cr = r.cgroups.iter().find(|c| c.id == 30).unwrap();
        let pc = &cr.precursors.as_ref().unwrap().period_changes;
        assert_eq!(
            pc.iter().map(|c| c.by.as_str()).collect::<Vec<_>>(),
            vec!["write", "unknown"]
        );
        assert!(
            pc[0]
                .evidence
                .contains("the cgroup file shows the new period")
        );
        let np = r.precursors.clone().unwrap();
        assert_eq!(
            (
                np.period_changes,
                np.period_changes_by_kernel,
                np.period_changes_by_write,
                np.callbacks_over_period,
                np.kernel_messages
            ),
            (3, 1, 1, 1, 2)
        );
        assert_eq!(np.unattributed_messages.len(), 1);
        assert_eq!(np.cgroups.len(), 2);
        let reason = &r.culprit.as_ref().unwrap().reason;
        assert!(
            reason.contains(
                "lockup precursors: period changed 1 time by the kernel (1.00 ms -> 2.00 ms), \
                 1 callback at least their period, 1 kernel message \"period too short\""
            ),
            "{reason}"
        );
        let t = render_text(&r, false);
        assert!(
            t.contains("LOCKUP PRECURSORS: 3 period change(s) (1 by the kernel, 1 written)"),
            "{t}"
        );
        assert!(
            t.contains("(no cgroup matched) cpu7: period too short, cannot scale up"),
            "{t}"
        );
        // Without a kmsg reader nothing is "kernel", and the evidence says why.
        let r = build_report(&header(), &a, 1, vec![]);
        assert!(!r.figures.kernel_messages.available || !a.kmsgs().is_empty());
        let y = r.cgroups.iter().find(|c| c.id == 20).unwrap();
        let c = &y.precursors.as_ref().unwrap().period_changes[0];
        // The capture holds messages even so (an older header): they still match.
        assert_eq!(c.by, "kernel");
        let mut b = Aggregator::new();
        b.add_period(&mk(20, 1, 10, 1_000_000, 500_000));
        b.add_period(&mk(20, 2, 10, 2_000_000, 1_000_000));
        let r = build_report(&header(), &b, 1, vec![]);
        let c = &r.cgroups[0].precursors.as_ref().unwrap().period_changes[0];
        assert_eq!(c.by, "unknown");
        assert!(
            c.evidence.starts_with("/dev/kmsg was not read"),
            "{}",
            c.evidence
        );
        assert!(c.evidence.contains("both doubled"), "{}", c.evidence);
    }
}
