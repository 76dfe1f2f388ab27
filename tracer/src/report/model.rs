//! The `cfstrace.report/1` document: plain serde types, what `--json` prints and what the
//! renderers read. Field names and order are the contract (tests/fixtures/*.report.json);
//! a field added later carries `#[serde(default)]` so older reports still read.
use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::analysis::{CgroupSpan, Distribution};
use crate::capture::{IrqSpanRecord, ParentRecord, PeriodScaling, ProbeStatus};
use crate::model::host::WatchdogFacts;
use crate::model::probe::{Backend, Probe, Style};
use crate::model::records::CgroupFacts;

/// What a headroom is measured from (`headroom_basis`, `worst_irqs_off.basis`). Declared in
/// the order ties are broken: a span contains its callbacks, so it is the truer figure.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
#[serde(rename_all = "snake_case")]
#[derive(strum::IntoStaticStr)]
#[strum(serialize_all = "snake_case")]
pub enum HeadroomBasis {
    /// A timer interrupt that ran period timers (`irq_span` traced).
    IrqSpan,
    /// A single period-timer callback.
    PeriodCallback,
    /// An async-unthrottle CSD (6.3+).
    AsyncCsd,
}

impl HeadroomBasis {
    pub fn as_str(self) -> &'static str {
        self.into()
    }
}

pub const BASIS_SPAN: HeadroomBasis = HeadroomBasis::IrqSpan;
pub const BASIS_CALLBACK: HeadroomBasis = HeadroomBasis::PeriodCallback;
pub const BASIS_CSD: HeadroomBasis = HeadroomBasis::AsyncCsd;

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
    pub headroom_basis: Option<HeadroomBasis>,
    /// The worst IRQs-off span behind `headroom_ns`.
    #[serde(default)]
    pub worst_irqs_off: Option<WorstIrqsOff>,
    /// The node's headroom against the highlight threshold (`--highlight-under`, default 10 %
    /// of watchdog_thresh). None only in a report from before it existed.
    #[serde(default)]
    pub headroom_alert: Option<HeadroomAlert>,
    /// The `--fail-under` judgement (`record`, `report`, `repro`): the figure judged, the
    /// threshold and the verdict the exit status follows. Only when a gate was asked for, so
    /// a report without one is unchanged.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gate: Option<Gate>,
    /// Lockup precursors over all cgroups (kernel period rescaling, callbacks over their
    /// period, several distribute passes, the kernel's own messages).
    #[serde(default)]
    pub precursors: Option<NodePrecursors>,
    pub culprit: Option<Culprit>,
    /// The lockup forecast (None in a report from before it existed).
    #[serde(default)]
    pub forecast: Option<super::forecast::Forecast>,
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

/// The headroom gate (`--fail-under PCT`) and its verdict.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct Gate {
    /// The threshold, % of watchdog_thresh (`--fail-under`).
    pub fail_under_pct: f64,
    /// The figure judged: the report's `headroom_ns` (measured from its `headroom_basis`) as %
    /// of watchdog_thresh (6 decimals, more where rounding would cross the threshold). None
    /// when not judged.
    pub headroom_pct: Option<f64>,
    /// `pass`, `fail` (exit status 3) or `not_judged` (exit status 4).
    pub verdict: GateVerdict,
    /// The verdict in one sentence, as stderr says it.
    pub why: String,
}

#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum GateVerdict {
    /// Headroom at or above the threshold.
    Pass,
    /// Headroom below the threshold.
    Fail,
    /// No figure to judge (no callback seen, watchdog_thresh unknown or 0): not a pass.
    NotJudged,
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
    /// Events were lost: figures counted from events are a lower bound (the first warning
    /// says how many and which figures stay exact, [`super::partial_reason`]).
    #[serde(default)]
    pub partial: bool,
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
    /// As named while recording (id 0 is callbacks whose cgroup was not read).
    #[serde(flatten)]
    pub facts: CgroupFacts,
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
    pub headroom_basis: Option<HeadroomBasis>,
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

impl CgroupReport {
    /// The timer-interrupt span its headroom is measured from (`headroom_basis` `irq_span`);
    /// None where its worst callback stands on its own.
    pub fn headroom_span(&self) -> Option<&SpanShare> {
        self.worst_irq_span
            .as_ref()
            .filter(|_| self.headroom_basis == Some(HeadroomBasis::IrqSpan))
    }

    /// The longest IRQs-off time its timers were part of: the timer-interrupt span that ran
    /// its worst, or its worst callback where no span holds it. The figure its
    /// `headroom_ns` is measured from.
    pub fn worst_irqs_off_ns(&self) -> u64 {
        self.headroom_span()
            .map_or(self.callback_ns.max, |w| w.duration_ns)
    }

    /// Its own time in that span (its worst callback where no span holds it).
    pub fn own_worst_ns(&self) -> u64 {
        self.headroom_span()
            .map_or(self.callback_ns.max, |w| w.own_ns)
    }
}

// Read through to what naming found, as a capture's record does.
impl std::ops::Deref for CgroupReport {
    type Target = CgroupFacts;

    fn deref(&self) -> &CgroupFacts {
        &self.facts
    }
}

pub use crate::model::records::cgroup_name;

/// A cpu quota, the period it refills in, and whose it is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BindingQuota {
    pub quota_us: u64,
    pub period_us: u64,
    /// It is an ancestor's: tighter than the cgroup's own, or the cgroup has none.
    pub ancestor: bool,
}

impl CgroupReport {
    /// The quota that limits it: the tightest quota/period of its own (as the kernel had it,
    /// else as named) and its ancestors'; on a tie its own. None when none has a quota.
    /// Derived from `kernel_*_us`, the facts and `parents`, so older reports have it too.
    pub fn binding_quota(&self) -> Option<BindingQuota> {
        let own = match (self.kernel_quota_us, self.kernel_period_us) {
            (Some(q), Some(p)) => Some((q, p)),
            _ => self.facts.quota_us.zip(self.facts.period_us),
        };
        let own = own.map(|(quota_us, period_us)| BindingQuota {
            quota_us,
            period_us,
            ancestor: false,
        });
        let ancestors = self.parents.iter().flatten().filter_map(|p| {
            Some(BindingQuota {
                quota_us: p.quota_us?,
                period_us: p.period_us?,
                ancestor: true,
            })
        });
        // q1/p1 < q2/p2 as q1*p2 < q2*p1: exact, no float.
        let tighter = |a: &BindingQuota, b: &BindingQuota| {
            u128::from(a.quota_us) * u128::from(b.period_us)
                < u128::from(b.quota_us) * u128::from(a.period_us)
        };
        own.into_iter()
            .chain(ancestors)
            .filter(|q| q.period_us > 0)
            .reduce(|best, q| if tighter(&q, &best) { q } else { best })
    }
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
    /// e.g. `throttled on 46 of 48 CPUs in its worst period (median period 40; 47 over the
    /// run; seen from unthrottle_cfs_rq)`: each figure says which it is.
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
    pub basis: HeadroomBasis,
    pub cpu: u32,
    pub duration_ns: u64,
    /// For an `irq_span`: the period timers in it and their time.
    #[serde(default)]
    pub period_timers: Option<u32>,
    #[serde(default)]
    pub period_timers_ns: Option<u64>,
}

/// The cgroup that drives the node toward the watchdog threshold: the one whose period
/// timers ran in the longest IRQs-off span (the lowest headroom of its own); on a tie (one
/// span running several cgroups' timers), the one that took most of that span, then the one
/// with the most IRQs-off time in total. Unresolved callbacks are no culprit while a named
/// cgroup has callbacks.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct Culprit {
    #[serde(flatten)]
    pub cgroup: CgroupReport,
    /// The culprit in one line: its name, then under 60 characters (the views cut the name
    /// to fit the terminal).
    #[serde(default)]
    pub headline: String,
    pub reason: String,
    /// The first cgroup by total IRQs-off time (the table's order), when it is not the
    /// culprit: the second figure, the cgroup that costs the node most over the run.
    #[serde(default)]
    pub busiest_by_total: Option<Busiest>,
}

/// A cgroup named by its total IRQs-off time.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct Busiest {
    pub id: u64,
    pub path: Option<String>,
    pub total_callback_ns: u64,
    /// Its own worst IRQs-off span (or callback, where spans are not traced).
    pub worst_irqs_off_ns: u64,
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
    pub worst_irq_span: Option<IrqSpanRecord>,
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
    pub headroom_basis: Option<HeadroomBasis>,
}
