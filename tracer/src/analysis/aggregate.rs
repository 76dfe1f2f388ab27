//! Per-cgroup and per-CPU aggregation of period-timer callbacks, of the async-unthrottle
//! CSDs (6.3+) that finish their work on other CPUs, and of the timer interrupts that run the
//! callbacks (one interrupt can serve several cgroups' timers: one IRQs-off span).
//!
//! Memory is the constraint that shapes this module: a node can have thousands of cgroups with
//! a quota, and `watch` keeps one state per cgroup for as long as it runs. Every histogram
//! starts small and auto-resizes only up to what was actually recorded, with hard caps, so the
//! worst case is bounded (about 25 KB a cgroup and 4 KB a CPU, see
//! `memory_bound_for_2000_cgroups`) and the typical case is a few KB.
use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};

use hdrhistogram::Histogram;
use tracer_ebpf::{
    ASYNC_EMPTY, ASYNC_LAST, ASYNC_LISTED, ASYNC_TRUNCATED, HOW_ENQUEUE_ENTITY,
    HOW_ENQUEUE_TASK_FAIR, HOW_IN_SPAN, HOW_LOOPS, HOW_PERIOD, HOW_QUEUED, HOW_REOPENED,
    HOW_RUNNABLE, HOW_SPREAD, HOW_UNTHROTTLE, SPREAD_CPUS,
};

use crate::capture::{
    AsyncRecord, CaptureLine, CgroupRecord, CpuTotalsRecord, EndRecord, IrqSpanRecord, LossRecord,
    PeriodRecord, PeriodScaling, UnsentPeriodsRecord,
};
use crate::model::cpuset::CpuSet;

/// Events whose timer could not be mapped to a cgroup carry id 0 and are kept under it.
pub const UNRESOLVED_ID: u64 = 0;
pub const UNRESOLVED_NAME: &str = "(unresolved)";

/// Highest CPU number tracked (x86_64's largest NR_CPUS). Events from higher CPUs are counted
/// but not given a per-CPU slot, so a corrupt `cpu` cannot make us allocate gigabytes.
pub const MAX_CPUS: usize = crate::model::cpuset::MAX_CPUS as usize;

/// Callback durations above this (~68.7 s, beyond the largest `watchdog_thresh` of 60 s) are
/// clamped in the histogram; the exact max is kept separately.
pub const CALLBACK_NS_CAP: u64 = 1 << 36;
/// Per-period counts above this are clamped in the histogram (exact max kept).
pub const COUNT_CAP: u64 = 1 << 20;
/// Callback times: 2 significant digits (< 1 % error). 3 digits costs 8x the memory.
const CALLBACK_SIGFIG: u8 = 2;
/// Per-period counts: exact below 32, within 1/16 above. Their mean, min and max are exact,
/// and quantiles are clamped to [min, max], so a steady "48 per period" reads 48.
const COUNT_SIGFIG: u8 = 1;

/// Two back-to-back callbacks on one CPU closer than this are taken to be served by the same
/// hrtimer interrupt (`__hrtimer_run_queues` runs every expired timer with IRQs off).
pub const CHAIN_GAP_NS: u64 = 2_000;

/// Cgroup ids are kernfs inode numbers: a multiplicative hash is plenty and much cheaper than
/// SipHash on the per-event path.
#[derive(Default, Clone, Copy)]
struct IdHasher(u64);

impl Hasher for IdHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.write_u64(u64::from(b));
        }
    }
    fn write_u64(&mut self, n: u64) {
        self.0 = (self.0.rotate_left(5) ^ n).wrapping_mul(0x517c_c1b7_2722_0a95);
    }
}

type IdMap<V> = HashMap<u64, V, BuildHasherDefault<IdHasher>>;

/// A distribution: a small auto-resizing histogram for quantiles, plus exact count, sum, min
/// and max.
#[derive(Clone, Debug)]
pub struct Distribution {
    // u32 buckets halve the memory; hdrhistogram saturates (never wraps) a full bucket, and a
    // cgroup's timer fires at most 1000 times a second, so one bucket needs 49 days to fill.
    hist: Histogram<u32>,
    cap: u64,
    count: u64,
    sum: u64,
    min: u64,
    max: u64,
}

impl Distribution {
    fn new(sigfig: u8, cap: u64) -> Self {
        // `new` is low = 1, high = 2, auto-resize: it grows with the largest value recorded.
        let hist = Histogram::new(sigfig).expect("constant sigfig is valid");
        Distribution {
            hist,
            cap,
            count: 0,
            sum: 0,
            min: u64::MAX,
            max: 0,
        }
    }

    fn callback() -> Self {
        Self::new(CALLBACK_SIGFIG, CALLBACK_NS_CAP)
    }

    fn counts() -> Self {
        Self::new(COUNT_SIGFIG, COUNT_CAP)
    }

    /// Per-CSD times: the callback range, but quantiles within 1/16 (min, max and mean stay
    /// exact), so a cgroup with async work still fits the per-cgroup memory bound.
    fn csd() -> Self {
        Self::new(COUNT_SIGFIG, CALLBACK_NS_CAP)
    }

    #[inline]
    fn record(&mut self, v: u64) {
        let clamped = v.min(self.cap);
        if self.hist.record(clamped).is_err() {
            // Only a failed resize gets here (cannot happen below the cap); never lose the event.
            self.hist.saturating_record(clamped);
        }
        self.count += 1;
        self.sum = self.sum.saturating_add(v);
        self.min = self.min.min(v);
        self.max = self.max.max(v);
    }

    /// Values known only as in-kernel sums (callbacks whose events were lost): the exact
    /// count, sum and max, and their log2 buckets (`tracer_ebpf::log2_bucket`), each recorded
    /// at its bucket's geometric middle, so quantiles are approximate only where events were
    /// lost.
    fn absorb_log2(&mut self, count: u64, sum: u64, max: u64, buckets: &[(u32, u64)]) {
        if count == 0 {
            return;
        }
        let mut low_seen = u64::MAX;
        for &(b, n) in buckets {
            if n == 0 {
                continue;
            }
            let (low, high) = log2_bounds(b);
            low_seen = low_seen.min(low);
            let mid = (((low as f64) * (high as f64)).sqrt() as u64).clamp(low, max.max(low));
            let v = mid.min(self.cap);
            let n32 = u32::try_from(n).unwrap_or(u32::MAX);
            if self.hist.record_n(v, n32).is_err() {
                self.hist.saturating_record(v);
            }
        }
        self.count += count;
        self.sum = self.sum.saturating_add(sum);
        self.min = self.min.min(low_seen);
        self.max = self.max.max(max);
    }

    pub fn count(&self) -> u64 {
        self.count
    }

    pub fn sum(&self) -> u64 {
        self.sum
    }

    /// 0 when empty.
    pub fn min(&self) -> u64 {
        if self.count == 0 { 0 } else { self.min }
    }

    pub fn max(&self) -> u64 {
        self.max
    }

    pub fn mean(&self) -> f64 {
        if self.count == 0 {
            0.0
        } else {
            self.sum as f64 / self.count as f64
        }
    }

    /// Value at quantile `q` (0..=1): the histogram's highest equivalent value, clamped to the
    /// exact [min, max] so bucket widths never report a value that was not reached.
    pub fn quantile(&self, q: f64) -> u64 {
        if self.count == 0 {
            return 0;
        }
        self.hist.value_at_quantile(q).clamp(self.min(), self.max())
    }

    /// Approximate heap bytes held by the histogram.
    pub fn heap_bytes(&self) -> usize {
        self.hist.distinct_values() * std::mem::size_of::<u32>()
    }
}

/// The value range `[low, high)` of log2 bucket `b` (`tracer_ebpf::log2_bucket`).
pub fn log2_bounds(b: u32) -> (u64, u64) {
    match b {
        0 => (0, 1),
        b if b >= 64 => (1 << 63, u64::MAX),
        b => (1 << (b - 1), 1 << b),
    }
}

/// `SpreadStats::sources` bits: how a period's CPUs were learnt.
/// `unthrottle_cfs_rq` probed inside the callback, each cfs_rq's CPU read (`HOW_SPREAD`).
pub const SPREAD_FROM_PROBE: u32 = 1 << 0;
/// The CPUs of the async-unthrottle CSDs (6.3+) that unthrottled the cgroup after the callback.
pub const SPREAD_FROM_CSD: u32 = 1 << 1;
/// Without the probe: the timer's own CPU, when its callback made tasks runnable (on 6.3+
/// the only cfs_rq a callback unthrottles itself is its own CPU's).
pub const SPREAD_FROM_TIMER_CPU: u32 = 1 << 2;

/// On how many distinct CPUs a cgroup's cfs_rqs were unthrottled, period by period: what
/// `crash> runq -g` shows as one throttled group on every CPU. A period runs from one callback
/// of its timer to the next; the CSDs in between belong to it.
#[derive(Clone, Debug)]
pub struct SpreadStats {
    per_period: Distribution,
    cpus: CpuSet,
    /// The period in progress: its callback's start and the CPUs seen so far.
    open: Option<(u64, CpuSet)>,
    overflow: u64,
    /// CSDs with no period of their own to go to (before the cgroup's first callback).
    unplaced_csds: u64,
    sources: u32,
}

impl SpreadStats {
    fn new() -> Self {
        SpreadStats {
            // Exact below 256 CPUs (a count quantized to 1/16 would misreport "40 of 48").
            per_period: Distribution::new(CALLBACK_SIGFIG, u64::from(SPREAD_CPUS)),
            cpus: CpuSet::default(),
            open: None,
            overflow: 0,
            unplaced_csds: 0,
            sources: 0,
        }
    }

    fn start_period(&mut self, p: &PeriodRecord) {
        if let Some((_, m)) = self.open.take() {
            self.per_period.record(u64::from(m.len()));
        }
        let mut m = CpuSet::default();
        if p.flags & HOW_SPREAD != 0 {
            self.sources |= SPREAD_FROM_PROBE;
            m = p.spread_cpus.clone();
            self.overflow += u64::from(p.spread_overflow);
        } else if p.flags & HOW_RUNNABLE != 0 && p.runnable > 0 && p.cpu < SPREAD_CPUS {
            self.sources |= SPREAD_FROM_TIMER_CPU;
            m.insert(p.cpu);
        }
        self.cpus.union_with(&m);
        self.open = Some((p.ts_ns, m));
    }

    fn add_csd(&mut self, a: &AsyncRecord) {
        self.sources |= SPREAD_FROM_CSD;
        if a.cpu >= SPREAD_CPUS {
            self.overflow += 1;
            return;
        }
        self.cpus.insert(a.cpu);
        match &mut self.open {
            Some((ts, m)) if a.csd_ts_ns >= *ts => {
                m.insert(a.cpu);
            }
            _ => self.unplaced_csds += 1,
        }
    }

    /// Distinct CPUs per period, the period still in progress included.
    pub fn per_period(&self) -> Distribution {
        let mut d = self.per_period.clone();
        if let Some((_, m)) = &self.open {
            d.record(u64::from(m.len()));
        }
        d
    }

    /// Every CPU seen over the run.
    pub fn cpus(&self) -> &CpuSet {
        &self.cpus
    }

    /// Unthrottles on CPUs beyond the bitmap (not in the figures).
    pub fn overflow(&self) -> u64 {
        self.overflow
    }

    /// CSDs that came before any callback of the cgroup (counted in `cpus` only).
    pub fn unplaced_csds(&self) -> u64 {
        self.unplaced_csds
    }

    /// `SPREAD_FROM_*` bits.
    pub fn sources(&self) -> u32 {
        self.sources
    }

    fn heap_bytes(&self) -> usize {
        std::mem::size_of::<Self>() + self.per_period.heap_bytes() + self.cpus.heap_bytes()
    }
}

/// A change of `cfs_bandwidth.period` between two callbacks of one timer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PeriodChange {
    /// The first callback with the new period.
    pub ts_ns: u64,
    pub cpu: u32,
    pub from_ns: u64,
    pub to_ns: u64,
    pub from_quota_ns: u64,
    pub to_quota_ns: u64,
}

/// Most period changes kept per cgroup (the rest are counted).
pub const MAX_PERIOD_CHANGES: usize = 32;

/// What the kernel's own lockup fix (2e8e19226398) watches for, per cgroup.
#[derive(Clone, Debug, Default)]
pub struct Precursors {
    changes: Vec<PeriodChange>,
    changes_dropped: u64,
    over_period: u64,
    multi_pass: u64,
}

impl Precursors {
    pub fn changes(&self) -> &[PeriodChange] {
        &self.changes
    }

    /// Changes beyond `MAX_PERIOD_CHANGES`.
    pub fn changes_dropped(&self) -> u64 {
        self.changes_dropped
    }

    /// Callbacks that took at least their own period.
    pub fn over_period(&self) -> u64 {
        self.over_period
    }

    /// Callbacks with more than one `distribute_cfs_runtime` pass.
    pub fn multi_pass(&self) -> u64 {
        self.multi_pass
    }
}

/// One cgroup's async-unthrottle work: CSDs on the CPUs that hold its throttled cfs_rqs,
/// queued by its period timer on another CPU (6.3+).
#[derive(Clone, Debug)]
pub struct AsyncStats {
    csds: u64,
    unthrottled: u64,
    enqueued: Option<u64>,
    runnable: Option<u64>,
    /// Its time in each CSD: its segment, or (listed mode) the whole CSD, shared.
    per_csd_ns: Distribution,
    cpus: CpuSet,
    flags: u32,
    /// (cpu, CSD start) of its last event: a CSD counts once even if split.
    last_csd: (u32, u64),
}

impl AsyncStats {
    fn new() -> Self {
        AsyncStats {
            csds: 0,
            unthrottled: 0,
            enqueued: None,
            runnable: None,
            per_csd_ns: Distribution::csd(),
            cpus: CpuSet::default(),
            flags: 0,
            last_csd: (u32::MAX, u64::MAX),
        }
    }

    #[inline]
    fn add(&mut self, a: &AsyncRecord) {
        let key = (a.cpu, a.csd_ts_ns);
        if key != self.last_csd {
            self.csds += 1;
            self.last_csd = key;
        }
        // Listed events stand for one still-throttled cfs_rq each; probed ones count calls.
        if a.flags & (HOW_UNTHROTTLE | ASYNC_LISTED) != 0 {
            self.unthrottled += u64::from(a.unthrottled);
        }
        if a.flags & (HOW_ENQUEUE_ENTITY | HOW_ENQUEUE_TASK_FAIR) != 0 {
            *self.enqueued.get_or_insert(0) += u64::from(a.enqueued);
        }
        if a.flags & HOW_RUNNABLE != 0 {
            *self.runnable.get_or_insert(0) += u64::from(a.runnable);
        }
        self.per_csd_ns.record(a.duration_ns);
        if (a.cpu as usize) < MAX_CPUS {
            self.cpus.insert(a.cpu);
        }
        self.flags |= a.flags;
    }

    /// CSDs that did work for this cgroup.
    pub fn csds(&self) -> u64 {
        self.csds
    }

    /// cfs_rqs unthrottled by those CSDs (listed mode: found still throttled at CSD entry).
    pub fn unthrottled(&self) -> u64 {
        self.unthrottled
    }

    /// None unless an enqueue probe counted.
    pub fn enqueued(&self) -> Option<u64> {
        self.enqueued
    }

    /// None unless `sched_update_nr_running_tp` counted (listed mode: whole CSDs, shared).
    pub fn runnable(&self) -> Option<u64> {
        self.runnable
    }

    pub fn per_csd_ns(&self) -> &Distribution {
        &self.per_csd_ns
    }

    /// CPUs whose CSDs unthrottled it.
    pub fn cpus(&self) -> &CpuSet {
        &self.cpus
    }

    /// OR of its events' flags (`ASYNC_LISTED`: attributed by listing, not by probe).
    pub fn flags(&self) -> u32 {
        self.flags
    }

    fn heap_bytes(&self) -> usize {
        std::mem::size_of::<Self>() + self.per_csd_ns.heap_bytes() + self.cpus.heap_bytes()
    }
}

/// Everything recorded for one cgroup's period timer.
#[derive(Clone, Debug)]
pub struct CgroupStats {
    callback_ns: Distribution,
    unthrottled: Option<Distribution>,
    enqueued: Option<Distribution>,
    /// Tasks queued under the cfs_rqs unthrottled per period (`HOW_QUEUED`).
    queued: Option<Distribution>,
    runnable: Option<Distribution>,
    max_loops: Option<u32>,
    cpus: CpuSet,
    period_ns: Option<u64>,
    quota_ns: Option<u64>,
    period_ns_min: u64,
    period_ns_max: u64,
    flags: u32,
    first_ts_ns: u64,
    last_ts_ns: u64,
    /// Boxed: most cgroups (and every one on a pre-6.3 kernel) have none.
    asyncs: Option<Box<AsyncStats>>,
    /// The longest timer-interrupt span that ran one of its callbacks.
    worst_span: Option<CgroupSpan>,
    spread: Option<Box<SpreadStats>>,
    /// Boxed: only cgroups whose timer showed a precursor have one.
    precursors: Option<Box<Precursors>>,
}

/// A timer-interrupt span seen from one cgroup: the whole span and its own part of it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct CgroupSpan {
    pub cpu: u32,
    pub ts_ns: u64,
    pub duration_ns: u64,
    /// Period timers in the span (all cgroups) and their time.
    pub timers: u32,
    pub timers_ns: u64,
    /// This cgroup's callbacks in the span and their time.
    pub own_timers: u32,
    pub own_ns: u64,
}

impl CgroupStats {
    fn new(ts: u64) -> Self {
        CgroupStats {
            callback_ns: Distribution::callback(),
            unthrottled: None,
            enqueued: None,
            queued: None,
            runnable: None,
            max_loops: None,
            cpus: CpuSet::default(),
            period_ns: None,
            quota_ns: None,
            period_ns_min: u64::MAX,
            period_ns_max: 0,
            flags: 0,
            first_ts_ns: ts,
            last_ts_ns: ts,
            asyncs: None,
            worst_span: None,
            spread: None,
            precursors: None,
        }
    }

    /// Per-period CPU spread (None before its first callback or CSD).
    pub fn spread(&self) -> Option<&SpreadStats> {
        self.spread.as_deref()
    }

    /// Lockup precursors seen (None: none).
    pub fn precursors(&self) -> Option<&Precursors> {
        self.precursors.as_deref()
    }

    fn precursors_mut(&mut self) -> &mut Precursors {
        self.precursors.get_or_insert_with(Default::default)
    }

    fn add_span(&mut self, s: CgroupSpan) {
        if self
            .worst_span
            .is_none_or(|w| s.duration_ns > w.duration_ns)
        {
            self.worst_span = Some(s);
        }
    }

    /// The longest timer-interrupt span that held one of its callbacks (None where spans are
    /// not traced, or the span's line was lost).
    pub fn worst_span(&self) -> Option<&CgroupSpan> {
        self.worst_span.as_ref()
    }

    #[inline]
    fn add_async(&mut self, a: &AsyncRecord) {
        self.asyncs
            .get_or_insert_with(|| Box::new(AsyncStats::new()))
            .add(a);
        if a.cgroup_id != UNRESOLVED_ID {
            self.spread
                .get_or_insert_with(|| Box::new(SpreadStats::new()))
                .add_csd(a);
        }
        self.first_ts_ns = self.first_ts_ns.min(a.ts_ns);
        self.last_ts_ns = self.last_ts_ns.max(a.ts_ns);
    }

    /// Async-unthrottle CSD work for this cgroup; None if none was seen.
    pub fn asyncs(&self) -> Option<&AsyncStats> {
        self.asyncs.as_deref()
    }

    #[inline]
    /// Callbacks whose events were lost, from the kernel's sums (a delta between two of its
    /// cumulative lines): counts, time and worst stay exact.
    fn add_unsent(&mut self, d: &UnsentDelta) {
        self.callback_ns
            .absorb_log2(d.periods, d.callback_ns_sum, d.callback_ns_max, &d.buckets);
        if d.over_period > 0 {
            self.precursors_mut().over_period += d.over_period;
        }
        if d.multi_pass > 0 {
            self.precursors_mut().multi_pass += d.multi_pass;
        }
        if d.max_loops > 0 {
            self.max_loops = Some(self.max_loops.unwrap_or(0).max(d.max_loops));
        }
    }

    fn add(&mut self, p: &PeriodRecord) {
        self.callback_ns.record(p.duration_ns);
        // A figure is only real when the event says its probe counted it; a zero from a
        // missing probe must not dilute the distribution.
        if p.flags & HOW_UNTHROTTLE != 0 {
            self.unthrottled
                .get_or_insert_with(Distribution::counts)
                .record(u64::from(p.unthrottled));
        }
        if p.flags & (HOW_ENQUEUE_ENTITY | HOW_ENQUEUE_TASK_FAIR) != 0 {
            self.enqueued
                .get_or_insert_with(Distribution::counts)
                .record(u64::from(p.enqueued));
        }
        if p.flags & HOW_RUNNABLE != 0 {
            self.runnable
                .get_or_insert_with(Distribution::counts)
                .record(u64::from(p.runnable));
        }
        if p.flags & HOW_QUEUED != 0 {
            self.queued
                .get_or_insert_with(Distribution::counts)
                .record(u64::from(p.queued));
        }
        if p.flags & HOW_LOOPS != 0 {
            self.max_loops = Some(self.max_loops.unwrap_or(0).max(p.loops));
            if p.loops > 1 {
                self.precursors_mut().multi_pass += 1;
            }
        }
        if (p.cpu as usize) < MAX_CPUS {
            self.cpus.insert(p.cpu);
        }
        if p.cgroup_id != UNRESOLVED_ID {
            self.spread
                .get_or_insert_with(|| Box::new(SpreadStats::new()))
                .start_period(p);
        }
        if p.period_ns > 0 && p.duration_ns >= p.period_ns {
            self.precursors_mut().over_period += 1;
        }
        // The period as the kernel had it, compared with this timer's previous callback.
        if p.cgroup_id != UNRESOLVED_ID
            && p.period_ns > 0
            && let Some(old) = self.period_ns.filter(|&o| o > 0 && o != p.period_ns)
        {
            let change = PeriodChange {
                ts_ns: p.ts_ns,
                cpu: p.cpu,
                from_ns: old,
                to_ns: p.period_ns,
                from_quota_ns: self.quota_ns.unwrap_or(0),
                to_quota_ns: p.quota_ns,
            };
            let pr = self.precursors_mut();
            if pr.changes.len() < MAX_PERIOD_CHANGES {
                pr.changes.push(change);
            } else {
                pr.changes_dropped += 1;
            }
        }
        if p.flags & HOW_PERIOD != 0 || p.period_ns != 0 {
            self.period_ns = Some(p.period_ns);
            self.quota_ns = Some(p.quota_ns);
            self.period_ns_min = self.period_ns_min.min(p.period_ns);
            self.period_ns_max = self.period_ns_max.max(p.period_ns);
        }
        self.flags |= p.flags;
        self.first_ts_ns = self.first_ts_ns.min(p.ts_ns);
        self.last_ts_ns = self.last_ts_ns.max(p.ts_ns);
    }

    /// Period-timer callbacks seen (0 for a cgroup seen only in async CSDs).
    pub fn periods(&self) -> u64 {
        self.callback_ns.count()
    }

    /// IRQs-off time of all its callbacks.
    pub fn total_callback_ns(&self) -> u64 {
        self.callback_ns.sum()
    }

    pub fn callback_ns(&self) -> &Distribution {
        &self.callback_ns
    }

    /// None unless some event carried a real count (`HOW_UNTHROTTLE`).
    pub fn unthrottled(&self) -> Option<&Distribution> {
        self.unthrottled.as_ref()
    }

    pub fn enqueued(&self) -> Option<&Distribution> {
        self.enqueued.as_ref()
    }

    /// Tasks queued under the cfs_rqs unthrottled, per period.
    pub fn queued(&self) -> Option<&Distribution> {
        self.queued.as_ref()
    }

    pub fn runnable(&self) -> Option<&Distribution> {
        self.runnable.as_ref()
    }

    /// Most `distribute_cfs_runtime` passes in one callback (None without `HOW_LOOPS`).
    pub fn max_loops(&self) -> Option<u32> {
        self.max_loops
    }

    pub fn cpus(&self) -> &CpuSet {
        &self.cpus
    }

    /// `cfs_bandwidth.period` last read by the kernel side.
    pub fn period_ns(&self) -> Option<u64> {
        self.period_ns
    }

    /// `cfs_bandwidth.quota` last read; `Some(u64::MAX)` is no quota.
    pub fn quota_ns(&self) -> Option<u64> {
        self.quota_ns
    }

    /// Smallest and largest period seen, when they differ: the kernel rescales the period
    /// itself ("period too short, scaling up") when a callback overruns it.
    pub fn period_change(&self) -> Option<(u64, u64)> {
        (self.period_ns.is_some() && self.period_ns_min != self.period_ns_max)
            .then_some((self.period_ns_min, self.period_ns_max))
    }

    /// OR of the events' `HOW_*` flags.
    pub fn flags(&self) -> u32 {
        self.flags
    }

    pub fn first_ts_ns(&self) -> u64 {
        self.first_ts_ns
    }

    pub fn last_ts_ns(&self) -> u64 {
        self.last_ts_ns
    }

    /// Approximate bytes held (struct plus heap).
    pub fn approx_bytes(&self) -> usize {
        std::mem::size_of::<Self>()
            + self.callback_ns.heap_bytes()
            + [
                &self.unthrottled,
                &self.enqueued,
                &self.runnable,
                &self.queued,
            ]
            .iter()
            .filter_map(|d| d.as_ref().map(Distribution::heap_bytes))
            .sum::<usize>()
            + self.cpus.heap_bytes()
            + self.asyncs.as_ref().map_or(0, |a| a.heap_bytes())
            + self.spread.as_ref().map_or(0, |s| s.heap_bytes())
            + self.precursors.as_ref().map_or(0, |p| {
                std::mem::size_of::<Precursors>()
                    + p.changes.capacity() * std::mem::size_of::<PeriodChange>()
            })
    }
}

/// Per-CPU period-timer load.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CpuStats {
    pub period_timers: u64,
    /// Sum of callback durations: IRQs-off time spent in period timers on this CPU.
    pub callback_ns: u64,
    pub max_callback_ns: u64,
    /// Longest run of back-to-back callbacks (gaps under `CHAIN_GAP_NS`): several cgroups'
    /// timers served by one interrupt add up to one IRQs-off span.
    pub max_chain_ns: u64,
    chain_ns: u64,
    chain_end_ns: u64,
    /// Async-unthrottle CSDs run on this CPU (IRQs off, like the timer).
    pub async_csds: u64,
    /// Their total time.
    pub async_ns: u64,
    pub max_async_ns: u64,
    /// Those that found nothing left to unthrottle.
    pub async_empty: u64,
}

impl CpuStats {
    #[inline]
    fn add(&mut self, p: &PeriodRecord) {
        self.period_timers += 1;
        self.callback_ns = self.callback_ns.saturating_add(p.duration_ns);
        self.max_callback_ns = self.max_callback_ns.max(p.duration_ns);
        let end = p.ts_ns.saturating_add(p.duration_ns);
        let chained = self.period_timers > 1
            && p.ts_ns >= self.chain_end_ns
            && p.ts_ns - self.chain_end_ns <= CHAIN_GAP_NS;
        self.chain_ns = if chained {
            self.chain_ns.saturating_add(end - self.chain_end_ns)
        } else {
            p.duration_ns
        };
        self.chain_end_ns = end;
        self.max_chain_ns = self.max_chain_ns.max(self.chain_ns);
    }

    /// Whole CSDs only: each CSD's last event carries its time.
    #[inline]
    fn add_async(&mut self, a: &AsyncRecord) {
        if a.flags & ASYNC_LAST == 0 {
            return;
        }
        self.async_csds += 1;
        self.async_ns = self.async_ns.saturating_add(a.csd_ns);
        self.max_async_ns = self.max_async_ns.max(a.csd_ns);
        if a.flags & ASYNC_EMPTY != 0 {
            self.async_empty += 1;
        }
    }
}

/// Per-CPU timer interrupts that ran period timers.
#[derive(Clone, Debug)]
pub struct SpanStats {
    span_ns: Distribution,
    timers_per_span: Distribution,
    timers_ns: u64,
    worst: IrqSpanRecord,
    /// The kernel's own worst span of this CPU, when it is longer than every span whose event
    /// arrived (that event was lost).
    kernel_worst: Option<IrqSpanRecord>,
}

impl SpanStats {
    fn new() -> Self {
        SpanStats {
            // Quantiles within 1/16 (min, max and mean exact): one per CPU on nodes of
            // thousands of CPUs stays small.
            span_ns: Distribution::csd(),
            timers_per_span: Distribution::counts(),
            timers_ns: 0,
            worst: IrqSpanRecord::default(),
            kernel_worst: None,
        }
    }

    fn add(&mut self, x: &IrqSpanRecord) {
        self.span_ns.record(x.duration_ns);
        self.timers_per_span.record(u64::from(x.timers));
        self.timers_ns = self.timers_ns.saturating_add(x.timers_ns);
        if self.span_ns.count() == 1 || x.duration_ns > self.worst.duration_ns {
            self.worst = *x;
        }
    }

    /// Whole interrupt times (IRQs off).
    pub fn span_ns(&self) -> &Distribution {
        &self.span_ns
    }

    pub fn timers_per_span(&self) -> &Distribution {
        &self.timers_per_span
    }

    /// Period-timer time inside the spans.
    pub fn timers_ns(&self) -> u64 {
        self.timers_ns
    }

    /// Share of the spans' time their period timers took (0..=1).
    pub fn timer_share(&self) -> f64 {
        let total = self.span_ns.sum();
        if total == 0 {
            0.0
        } else {
            (self.timers_ns as f64 / total as f64).min(1.0)
        }
    }

    /// The longest span: of the events, or the kernel's own when its event was lost.
    pub fn worst(&self) -> &IrqSpanRecord {
        match &self.kernel_worst {
            Some(k) if k.duration_ns > self.worst.duration_ns => k,
            _ => &self.worst,
        }
    }
}

/// Most cgroups remembered for one open span (the rest go unattributed; see the warning).
/// Before 6.4 every timer of one period expires together, so one interrupt can hold as many
/// period timers as there are throttled cgroups: the cap is only a memory bound.
const PENDING_SPAN_CGROUPS: usize = 1 << 16;

/// The callbacks of a span whose own line has not arrived yet: period lines come first.
#[derive(Clone, Debug, Default)]
struct PendingSpan {
    ts_ns: u64,
    /// cgroup -> (its callbacks' time, its callbacks).
    cgroups: HashMap<u64, (u64, u32)>,
}

/// One cgroup as seen by the report: its stats and its name, if it was named.
#[derive(Clone, Copy, Debug)]
pub struct CgroupView<'a> {
    pub id: u64,
    pub stats: &'a CgroupStats,
    pub record: Option<&'a CgroupRecord>,
}

impl CgroupView<'_> {
    /// The path, `(unresolved)` for id 0, or `(cgroup <id>)` when it was never named.
    pub fn display_name(&self) -> String {
        match self.record.and_then(|r| r.path.as_deref()) {
            Some(p) => p.to_string(),
            None if self.id == UNRESOLVED_ID => UNRESOLVED_NAME.to_string(),
            None => format!("(cgroup {})", self.id),
        }
    }
}

/// Everything a capture (or a `watch` interval) adds up to.
#[derive(Clone, Debug, Default)]
pub struct Aggregator {
    cgroups: IdMap<CgroupStats>,
    names: IdMap<CgroupRecord>,
    cpus: Vec<CpuStats>,
    periods: u64,
    first_ts_ns: Option<u64>,
    last_ts_ns: u64,
    last_end_ns: u64,
    flags_seen: u32,
    loss: Option<LossRecord>,
    end: Option<EndRecord>,
    reopened: u64,
    cpu_out_of_range: u64,
    async_events: u64,
    async_csds: u64,
    async_empty: u64,
    async_truncated: u64,
    async_flags_seen: u32,
    /// Per CPU, boxed: only CPUs whose interrupts ran period timers have one.
    spans: Vec<Option<Box<SpanStats>>>,
    pending_spans: Vec<PendingSpan>,
    irq_spans: u64,
    irq_span_flags_seen: u32,
    /// Callbacks closed inside a traced span.
    periods_in_span: u64,
    pending_overflow: u64,
    kmsgs: Vec<PeriodScaling>,
    kmsgs_dropped: u64,
    /// Periods (us) each cgroup's file showed when it was named: a naming line follows every
    /// period change seen while recording, so a written period shows up here.
    file_periods: IdMap<Vec<u64>>,
    /// The kernel's own sums, the last line of each cgroup and CPU.
    unsent_cgroups: IdMap<UnsentPeriodsRecord>,
    kernel_cpus: std::collections::BTreeMap<u32, CpuTotalsRecord>,
    /// Callbacks known only from the kernel's sums (their events were lost).
    unsent_periods: u64,
}

/// What one `unsent_periods` line adds to the one before it for the same cgroup.
struct UnsentDelta {
    periods: u64,
    callback_ns_sum: u64,
    callback_ns_max: u64,
    over_period: u64,
    multi_pass: u64,
    max_loops: u32,
    buckets: Vec<(u32, u64)>,
}

impl UnsentDelta {
    fn between(prev: Option<&UnsentPeriodsRecord>, now: &UnsentPeriodsRecord) -> Self {
        let zero = UnsentPeriodsRecord::default();
        let prev = prev.unwrap_or(&zero);
        let before = |b: u32| {
            prev.callback_log2
                .iter()
                .find(|(pb, _)| *pb == b)
                .map_or(0, |(_, n)| u64::from(*n))
        };
        UnsentDelta {
            periods: now.periods.saturating_sub(prev.periods),
            callback_ns_sum: now.callback_ns_sum.saturating_sub(prev.callback_ns_sum),
            callback_ns_max: now.callback_ns_max,
            over_period: now.over_period.saturating_sub(prev.over_period),
            multi_pass: now.multi_pass.saturating_sub(prev.multi_pass),
            max_loops: now.max_loops,
            buckets: now
                .callback_log2
                .iter()
                .map(|&(b, n)| (b, u64::from(n).saturating_sub(before(b))))
                .filter(|(_, n)| *n > 0)
                .collect(),
        }
    }
}

/// Most kernel "period too short" messages kept (the kernel rate-limits them anyway).
pub const MAX_KMSGS: usize = 1024;

impl Aggregator {
    pub fn new() -> Self {
        Self::default()
    }

    /// One callback. Allocation-free once its cgroup and CPU have been seen (histograms grow
    /// only when a new largest value needs more buckets).
    pub fn add_period(&mut self, p: &PeriodRecord) {
        self.periods += 1;
        self.flags_seen |= p.flags;
        self.first_ts_ns = Some(self.first_ts_ns.map_or(p.ts_ns, |f| f.min(p.ts_ns)));
        self.last_ts_ns = self.last_ts_ns.max(p.ts_ns);
        self.last_end_ns = self.last_end_ns.max(p.ts_ns.saturating_add(p.duration_ns));
        if p.flags & HOW_REOPENED != 0 {
            self.reopened += 1;
        }
        if p.flags & HOW_IN_SPAN != 0 {
            self.periods_in_span += 1;
            self.note_in_span(p);
        }
        self.cgroups
            .entry(p.cgroup_id)
            .or_insert_with(|| CgroupStats::new(p.ts_ns))
            .add(p);
        let cpu = p.cpu as usize;
        if cpu < MAX_CPUS {
            if cpu >= self.cpus.len() {
                self.cpus.resize(cpu + 1, CpuStats::default());
            }
            self.cpus[cpu].add(p);
        } else {
            self.cpu_out_of_range += 1;
        }
    }

    /// One async-unthrottle event: per-CPU CSD time from each CSD's last event, per-cgroup
    /// work from every event that names a cgroup (or that would have, under id 0).
    pub fn add_async(&mut self, a: &AsyncRecord) {
        self.async_events += 1;
        self.async_flags_seen |= a.flags;
        self.first_ts_ns = Some(self.first_ts_ns.map_or(a.ts_ns, |f| f.min(a.ts_ns)));
        self.last_ts_ns = self.last_ts_ns.max(a.ts_ns);
        self.last_end_ns = self.last_end_ns.max(a.ts_ns.saturating_add(a.duration_ns));
        if a.flags & ASYNC_LAST != 0 {
            self.async_csds += 1;
            if a.flags & ASYNC_EMPTY != 0 {
                self.async_empty += 1;
            }
            if a.flags & ASYNC_TRUNCATED != 0 {
                self.async_truncated += 1;
            }
        }
        if a.flags & ASYNC_EMPTY == 0 {
            self.cgroups
                .entry(a.cgroup_id)
                .or_insert_with(|| CgroupStats::new(a.ts_ns))
                .add_async(a);
        }
        let cpu = a.cpu as usize;
        if cpu < MAX_CPUS {
            if cpu >= self.cpus.len() {
                self.cpus.resize(cpu + 1, CpuStats::default());
            }
            self.cpus[cpu].add_async(a);
        } else {
            self.cpu_out_of_range += 1;
        }
    }

    /// Remember which cgroup a callback inside a not yet closed span belongs to.
    fn note_in_span(&mut self, p: &PeriodRecord) {
        let cpu = p.cpu as usize;
        if cpu >= MAX_CPUS {
            return;
        }
        if cpu >= self.pending_spans.len() {
            self.pending_spans.resize(cpu + 1, PendingSpan::default());
        }
        let ps = &mut self.pending_spans[cpu];
        if ps.ts_ns != p.span_ts_ns {
            // A new span (the previous one's line was lost, or had no callbacks we saw).
            ps.ts_ns = p.span_ts_ns;
            ps.cgroups.clear();
        }
        if let Some(e) = ps.cgroups.get_mut(&p.cgroup_id) {
            e.0 = e.0.saturating_add(p.duration_ns);
            e.1 += 1;
        } else if ps.cgroups.len() < PENDING_SPAN_CGROUPS {
            ps.cgroups.insert(p.cgroup_id, (p.duration_ns, 1));
        } else {
            self.pending_overflow += 1;
        }
    }

    /// One timer interrupt that ran period timers: per-CPU span figures, and each cgroup
    /// whose callbacks it held learns the span.
    pub fn add_irq_span(&mut self, x: &IrqSpanRecord) {
        self.irq_spans += 1;
        self.irq_span_flags_seen |= x.flags;
        self.first_ts_ns = Some(self.first_ts_ns.map_or(x.ts_ns, |f| f.min(x.ts_ns)));
        self.last_ts_ns = self.last_ts_ns.max(x.ts_ns);
        self.last_end_ns = self.last_end_ns.max(x.ts_ns.saturating_add(x.duration_ns));
        let cpu = x.cpu as usize;
        if cpu >= MAX_CPUS {
            self.cpu_out_of_range += 1;
            return;
        }
        if cpu >= self.spans.len() {
            self.spans.resize(cpu + 1, None);
        }
        self.spans[cpu]
            .get_or_insert_with(|| Box::new(SpanStats::new()))
            .add(x);
        if cpu >= self.cpus.len() {
            self.cpus.resize(cpu + 1, CpuStats::default());
        }
        let Some(ps) = self.pending_spans.get_mut(cpu) else {
            return;
        };
        if ps.ts_ns != x.ts_ns {
            return;
        }
        for (&id, &(own_ns, own_timers)) in &ps.cgroups {
            if let Some(c) = self.cgroups.get_mut(&id) {
                c.add_span(CgroupSpan {
                    cpu: x.cpu,
                    ts_ns: x.ts_ns,
                    duration_ns: x.duration_ns,
                    timers: x.timers,
                    timers_ns: x.timers_ns,
                    own_timers,
                    own_ns,
                });
            }
        }
        ps.cgroups.clear();
        ps.ts_ns = 0;
    }

    /// A kernel "period too short" message.
    pub fn add_kmsg(&mut self, k: PeriodScaling) {
        if self.kmsgs.len() < MAX_KMSGS {
            self.kmsgs.push(k);
        } else {
            self.kmsgs_dropped += 1;
        }
    }

    /// Periods (us) the cgroup's cpu.max / cpu.cfs_period_us showed whenever it was named.
    pub fn file_periods(&self, id: u64) -> &[u64] {
        self.file_periods.get(&id).map_or(&[], Vec::as_slice)
    }

    /// The kernel's "period too short" messages seen while recording.
    pub fn kmsgs(&self) -> &[PeriodScaling] {
        &self.kmsgs
    }

    /// Messages beyond `MAX_KMSGS`.
    pub fn kmsgs_dropped(&self) -> u64 {
        self.kmsgs_dropped
    }

    /// Timer-interrupt spans seen (those that ran a period timer).
    pub fn irq_spans(&self) -> u64 {
        self.irq_spans
    }

    /// OR of the spans' flags (`HOW_FRAME_*`: how they were timed).
    pub fn irq_span_flags_seen(&self) -> u32 {
        self.irq_span_flags_seen
    }

    /// Callbacks that closed inside a traced span.
    pub fn periods_in_span(&self) -> u64 {
        self.periods_in_span
    }

    /// Span figures of one CPU, if its interrupts ran period timers.
    pub fn cpu_spans(&self, cpu: u32) -> Option<&SpanStats> {
        self.spans.get(cpu as usize).and_then(|s| s.as_deref())
    }

    /// The longest span of all CPUs.
    pub fn worst_irq_span(&self) -> Option<&IrqSpanRecord> {
        self.spans
            .iter()
            .flatten()
            .map(|s| s.worst())
            .max_by_key(|w| (w.duration_ns, std::cmp::Reverse(w.cpu)))
    }

    /// A cgroup's name. A later record replaces an earlier one, except that a record without a
    /// path never replaces one with a path (the cgroup went away between two namings).
    pub fn add_cgroup(&mut self, rec: CgroupRecord) {
        if let Some(p) = rec.period_us {
            let v = self.file_periods.entry(rec.id).or_default();
            if !v.contains(&p) && v.len() < 8 {
                v.push(p);
            }
        }
        match self.names.get(&rec.id) {
            Some(old) if old.path.is_some() && rec.path.is_none() => {}
            _ => {
                self.names.insert(rec.id, rec);
            }
        }
    }

    /// Loss counters are cumulative: keep the highest of each.
    pub fn set_loss(&mut self, l: LossRecord) {
        self.loss = Some(match self.loss {
            None => l,
            Some(o) => LossRecord {
                ts_ns: o.ts_ns.max(l.ts_ns),
                ringbuf_full: o.ringbuf_full.max(l.ringbuf_full),
                unmatched_exit: o.unmatched_exit.max(l.unmatched_exit),
                missed_exit: o.missed_exit.max(l.missed_exit),
                cgroup_read: o.cgroup_read.max(l.cgroup_read),
                csd_unmatched_exit: o.csd_unmatched_exit.max(l.csd_unmatched_exit),
                csd_missed_exit: o.csd_missed_exit.max(l.csd_missed_exit),
                span_unmatched_exit: o.span_unmatched_exit.max(l.span_unmatched_exit),
                span_missed_exit: o.span_missed_exit.max(l.span_missed_exit),
                unsent_full: o.unsent_full.max(l.unsent_full),
            },
        });
    }

    pub fn feed(&mut self, line: &CaptureLine) {
        match line {
            CaptureLine::Period(p) => self.add_period(p),
            CaptureLine::AsyncUnthrottle(a) => self.add_async(a),
            CaptureLine::IrqSpan(x) => self.add_irq_span(x),
            CaptureLine::KmsgPeriodScaling(k) => self.add_kmsg(k.clone()),
            CaptureLine::Cgroup(c) => self.add_cgroup(c.clone()),
            CaptureLine::Loss(l) => self.set_loss(*l),
            CaptureLine::UnsentPeriods(t) => self.add_unsent(t),
            CaptureLine::CpuTotals(t) => self.add_cpu_totals(t),
            CaptureLine::End(e) => self.end = Some(e.clone()),
        }
    }

    /// The kernel's sums of a cgroup's callbacks whose events were lost (cumulative: each line
    /// adds what it has beyond the cgroup's previous one).
    pub fn add_unsent(&mut self, t: &UnsentPeriodsRecord) {
        let d = UnsentDelta::between(self.unsent_cgroups.get(&t.id), t);
        self.unsent_cgroups.insert(t.id, t.clone());
        if d.periods == 0 {
            return;
        }
        self.unsent_periods += d.periods;
        self.cgroups
            .entry(t.id)
            .or_insert_with(|| CgroupStats::new(t.ts_ns))
            .add_unsent(&d);
    }

    /// A CPU's timer interrupts as the kernel summed them: its worst span counts even when
    /// that span's event was lost.
    pub fn add_cpu_totals(&mut self, t: &CpuTotalsRecord) {
        self.kernel_cpus.insert(t.cpu, t.clone());
        let cpu = t.cpu as usize;
        if t.spans == 0 || cpu >= MAX_CPUS {
            return;
        }
        if cpu >= self.spans.len() {
            self.spans.resize(cpu + 1, None);
        }
        if cpu >= self.cpus.len() {
            self.cpus.resize(cpu + 1, CpuStats::default());
        }
        let s = self.spans[cpu].get_or_insert_with(|| Box::new(SpanStats::new()));
        if t.worst_ns > s.worst().duration_ns {
            s.kernel_worst = Some(IrqSpanRecord {
                ts_ns: t.worst_ts_ns,
                cpu: t.cpu,
                duration_ns: t.worst_ns,
                timers: t.worst_timers,
                timers_ns: t.worst_timers_ns,
                flags: 0,
            });
        }
    }

    /// Callbacks known only from the kernel's sums: their events were lost.
    pub fn unsent_periods(&self) -> u64 {
        self.unsent_periods
    }

    /// A cgroup's callbacks whose events were lost, as the kernel summed them.
    pub fn unsent(&self, id: u64) -> Option<&UnsentPeriodsRecord> {
        self.unsent_cgroups.get(&id)
    }

    /// Every cgroup whose lost callbacks the kernel summed.
    pub fn unsent_cgroups(&self) -> impl Iterator<Item = &UnsentPeriodsRecord> + '_ {
        self.unsent_cgroups.values()
    }

    /// Each CPU's timer interrupts as the kernel summed them, by CPU.
    pub fn kernel_cpus(&self) -> &std::collections::BTreeMap<u32, CpuTotalsRecord> {
        &self.kernel_cpus
    }

    /// Period-timer callbacks seen.
    pub fn periods(&self) -> u64 {
        self.periods
    }

    /// Async-unthrottle events seen.
    pub fn async_events(&self) -> u64 {
        self.async_events
    }

    /// Whole async-unthrottle CSDs seen (their last events).
    pub fn async_csds(&self) -> u64 {
        self.async_csds
    }

    /// CSDs that found nothing to unthrottle.
    pub fn async_empty(&self) -> u64 {
        self.async_empty
    }

    /// OR of the async events' flags.
    pub fn async_flags_seen(&self) -> u32 {
        self.async_flags_seen
    }

    /// Every cgroup that had at least one callback or async event, in no particular order.
    pub fn cgroups(&self) -> impl Iterator<Item = CgroupView<'_>> + '_ {
        self.cgroups.iter().map(|(&id, stats)| CgroupView {
            id,
            stats,
            record: self.names.get(&id),
        })
    }

    pub fn cgroup(&self, id: u64) -> Option<CgroupView<'_>> {
        self.cgroups.get(&id).map(|stats| CgroupView {
            id,
            stats,
            record: self.names.get(&id),
        })
    }

    pub fn cgroup_count(&self) -> usize {
        self.cgroups.len()
    }

    /// The naming of a cgroup, whether or not it had callbacks.
    pub fn name(&self, id: u64) -> Option<&CgroupRecord> {
        self.names.get(&id)
    }

    /// CPUs that ran at least one period timer or async-unthrottle CSD, ascending.
    pub fn cpus(&self) -> impl Iterator<Item = (u32, &CpuStats)> + '_ {
        self.cpus
            .iter()
            .enumerate()
            .filter(|(i, c)| {
                c.period_timers > 0 || c.async_csds > 0 || self.cpu_spans(*i as u32).is_some()
            })
            .map(|(i, c)| (i as u32, c))
    }

    /// OR of every event's `HOW_*` flags: which figures were really counted.
    pub fn flags_seen(&self) -> u32 {
        self.flags_seen
    }

    pub fn first_ts_ns(&self) -> Option<u64> {
        self.first_ts_ns
    }

    /// Start of the last callback.
    pub fn last_ts_ns(&self) -> Option<u64> {
        self.first_ts_ns.map(|_| self.last_ts_ns)
    }

    /// First callback's start to last callback's end (0 with no callbacks).
    pub fn span_ns(&self) -> u64 {
        self.first_ts_ns
            .map_or(0, |f| self.last_end_ns.saturating_sub(f))
    }

    pub fn loss(&self) -> Option<&LossRecord> {
        self.loss.as_ref()
    }

    pub fn end(&self) -> Option<&EndRecord> {
        self.end.as_ref()
    }

    /// Callbacks that started while a frame was still open (the previous close was missed).
    pub fn reopened(&self) -> u64 {
        self.reopened
    }

    /// Things about the data a reader of the report should know.
    pub fn warnings(&self) -> Vec<String> {
        let mut w = Vec::new();
        if self.reopened > 0 {
            w.push(format!(
                "{} callback(s) started while a frame was open: a callback's end was missed \
                 (its duration was not measured)",
                self.reopened
            ));
        }
        if self.async_truncated > 0 {
            w.push(format!(
                "{} async-unthrottle CSD(s) listed more than {} cfs_rqs: the rest are not \
                 attributed",
                self.async_truncated,
                tracer_ebpf::MAX_LISTED
            ));
        }
        if self.pending_overflow > 0 {
            w.push(format!(
                "{} callback(s) shared a timer interrupt with more than {PENDING_SPAN_CGROUPS} \
                 other cgroups: their cgroups do not learn that interrupt's span",
                self.pending_overflow
            ));
        }
        if self.cpu_out_of_range > 0 {
            w.push(format!(
                "{} event(s) named a CPU >= {MAX_CPUS}; left out of the per-CPU figures",
                self.cpu_out_of_range
            ));
        }
        w
    }

    /// Approximate bytes held by the per-cgroup state.
    pub fn approx_bytes(&self) -> usize {
        self.cgroups
            .values()
            .map(CgroupStats::approx_bytes)
            .sum::<usize>()
            + self.cpus.capacity() * std::mem::size_of::<CpuStats>()
            + self
                .spans
                .iter()
                .flatten()
                .map(|s| {
                    std::mem::size_of::<SpanStats>()
                        + s.span_ns.heap_bytes()
                        + s.timers_per_span.heap_bytes()
                })
                .sum::<usize>()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::workload::{Workload, WorkloadKind};

    /// Lost callbacks come back from the kernel's cumulative sums: each line adds only what it
    /// has beyond the cgroup's previous one, counts and sums exactly, quantiles from buckets.
    #[test]
    fn unsent_callbacks_count_exactly() {
        let mut agg = Aggregator::new();
        for i in 0..10 {
            agg.add_period(&period(7, 0, 1_000 + i, 2_000));
        }
        let b = |v: u64| tracer_ebpf::log2_bucket(v) as u32;
        let first = UnsentPeriodsRecord {
            ts_ns: 5_000,
            id: 7,
            periods: 4,
            callback_ns_sum: 4 * 3_000,
            callback_ns_max: 3_000,
            over_period: 1,
            callback_log2: vec![(b(3_000), 4)],
            ..Default::default()
        };
        agg.feed(&CaptureLine::UnsentPeriods(first.clone()));
        // The same line again (a later write with nothing new) adds nothing.
        agg.feed(&CaptureLine::UnsentPeriods(first.clone()));
        let later = UnsentPeriodsRecord {
            ts_ns: 9_000,
            periods: 6,
            callback_ns_sum: 4 * 3_000 + 2 * 900_000,
            callback_ns_max: 900_000,
            callback_log2: vec![(b(3_000), 4), (b(900_000), 2)],
            ..first
        };
        agg.feed(&CaptureLine::UnsentPeriods(later));
        let v = agg.cgroup(7).expect("cgroup 7");
        let cb = v.stats.callback_ns();
        assert_eq!(cb.count(), 16);
        assert_eq!(v.stats.periods(), 16);
        assert_eq!(cb.sum(), 10 * 2_000 + 4 * 3_000 + 2 * 900_000);
        assert_eq!(
            cb.max(),
            900_000,
            "the worst callback was one whose event was lost"
        );
        assert_eq!(cb.min(), 2_000);
        // The two slow ones land in their bucket: p99 within it.
        let p99 = cb.quantile(0.99);
        assert!((1 << 19..=900_000).contains(&p99), "{p99}");
        assert_eq!(agg.unsent_periods(), 6);
        assert_eq!(agg.periods(), 10, "decoded callbacks stay what was decoded");
        assert_eq!(v.stats.precursors().map(Precursors::over_period), Some(1));
        // A cgroup that lost every event still appears.
        agg.feed(&CaptureLine::UnsentPeriods(UnsentPeriodsRecord {
            id: 8,
            periods: 3,
            callback_ns_sum: 3_000,
            callback_ns_max: 1_500,
            callback_log2: vec![(b(500), 2), (b(1_500), 1)],
            ..Default::default()
        }));
        let v = agg.cgroup(8).expect("cgroup 8");
        assert_eq!((v.stats.periods(), v.stats.total_callback_ns()), (3, 3_000));
    }

    /// The kernel's worst span of a CPU replaces the events' when it is longer (its event
    /// was lost), and never a longer one that arrived.
    #[test]
    fn kernel_worst_span_counts_when_its_event_was_lost() {
        let mut agg = Aggregator::new();
        agg.add_irq_span(&IrqSpanRecord {
            ts_ns: 100,
            cpu: 1,
            duration_ns: 40_000,
            timers: 3,
            timers_ns: 30_000,
            flags: 0,
        });
        let totals = |worst_ns| CpuTotalsRecord {
            cpu: 1,
            spans: 2,
            worst_ns,
            worst_ts_ns: 500,
            worst_timers: 9,
            worst_timers_ns: 70_000,
            ..Default::default()
        };
        agg.feed(&CaptureLine::CpuTotals(totals(20_000)));
        assert_eq!(
            agg.cpu_spans(1).map(|s| s.worst().duration_ns),
            Some(40_000)
        );
        agg.feed(&CaptureLine::CpuTotals(totals(90_000)));
        let w = agg.cpu_spans(1).map(|s| *s.worst()).expect("spans of cpu1");
        assert_eq!((w.duration_ns, w.timers, w.ts_ns), (90_000, 9, 500));
        assert_eq!(agg.worst_irq_span().map(|w| w.duration_ns), Some(90_000));
        // Only the events' spans are counted: the lost one is not invented.
        assert_eq!(agg.cpu_spans(1).map(|s| s.span_ns().count()), Some(1));
    }

    fn period(cg: u64, cpu: u32, ts: u64, dur: u64) -> PeriodRecord {
        PeriodRecord {
            ts_ns: ts,
            cpu,
            duration_ns: dur,
            cgroup_id: cg,
            quota_ns: u64::MAX,
            ..Default::default()
        }
    }

    fn named(id: u64, path: Option<&str>) -> CgroupRecord {
        CgroupRecord {
            id,
            path: path.map(str::to_string),
            workload: Workload {
                kind: WorkloadKind::Cgroup,
                application: None,
                container: None,
                pod_uid: None,
                qos: None,
                unit: None,
            },
            processes: vec![],
            period_us: None,
            quota_us: None,
            note: None,
            parents: None,
        }
    }

    #[test]
    fn per_cgroup_and_per_cpu_figures() {
        let mut a = Aggregator::new();
        let flags = HOW_UNTHROTTLE | HOW_LOOPS | HOW_PERIOD;
        for i in 0..100u64 {
            let mut p = period(7, (i % 4) as u32, 1_000 + i * 100_000, 1_000 + i);
            p.flags = flags;
            p.unthrottled = 48;
            p.loops = if i == 50 { 3 } else { 1 };
            p.period_ns = 100_000_000;
            p.quota_ns = 20_000_000;
            a.add_period(&p);
        }
        a.add_period(&period(0, 5, 50, 10));
        assert_eq!(a.periods(), 101);
        assert_eq!(a.cgroup_count(), 2);
        let c = a.cgroup(7).unwrap();
        assert_eq!(c.stats.periods(), 100);
        assert_eq!(c.stats.total_callback_ns(), (1_000..1_100).sum::<u64>());
        let d = c.stats.callback_ns();
        assert_eq!((d.min(), d.max()), (1_000, 1_099));
        let p50 = d.quantile(0.5);
        assert!((1_045..=1_058).contains(&p50), "{p50}");
        let u = c.stats.unthrottled().unwrap();
        assert_eq!(
            (u.quantile(0.5), u.quantile(0.99), u.mean()),
            (48, 48, 48.0)
        );
        assert!(c.stats.enqueued().is_none() && c.stats.runnable().is_none());
        assert_eq!(c.stats.max_loops(), Some(3));
        assert_eq!(c.stats.cpus().iter().collect::<Vec<_>>(), vec![0, 1, 2, 3]);
        assert_eq!(c.stats.period_ns(), Some(100_000_000));
        assert_eq!(c.stats.quota_ns(), Some(20_000_000));
        assert_eq!(c.stats.period_change(), None);
        assert_eq!(a.cgroup(0).unwrap().display_name(), UNRESOLVED_NAME);
        assert_eq!(c.display_name(), "(cgroup 7)");

        let cpus: Vec<_> = a.cpus().collect();
        assert_eq!(
            cpus.iter().map(|c| c.0).collect::<Vec<_>>(),
            vec![0, 1, 2, 3, 5]
        );
        assert_eq!(cpus[0].1.period_timers, 25);
        assert_eq!(cpus[3].1.max_callback_ns, 1_099);
        assert_eq!(a.flags_seen(), flags);
        assert_eq!(a.first_ts_ns(), Some(50));
        assert_eq!(a.span_ns(), 1_000 + 99 * 100_000 + 1_099 - 50);
    }

    #[test]
    fn counts_only_when_the_event_says_so() {
        let mut a = Aggregator::new();
        let mut p = period(1, 0, 0, 10);
        p.unthrottled = 0;
        a.add_period(&p);
        p.flags = HOW_UNTHROTTLE;
        p.unthrottled = 4;
        a.add_period(&p);
        let u = a.cgroup(1).unwrap().stats.unthrottled().unwrap().clone();
        assert_eq!((u.count(), u.min(), u.mean()), (1, 4, 4.0));
        assert_eq!(a.cgroup(1).unwrap().stats.max_loops(), None);
    }

    #[test]
    fn names_never_lose_their_path() {
        let mut a = Aggregator::new();
        a.add_cgroup(named(3, Some("/a")));
        a.add_cgroup(named(3, None));
        assert_eq!(a.name(3).unwrap().path.as_deref(), Some("/a"));
        a.add_cgroup(named(3, Some("/b")));
        assert_eq!(a.name(3).unwrap().path.as_deref(), Some("/b"));
        a.add_cgroup(named(4, None));
        a.add_cgroup(named(4, Some("/c")));
        assert_eq!(a.name(4).unwrap().path.as_deref(), Some("/c"));
        a.add_period(&period(3, 0, 0, 1));
        assert_eq!(a.cgroup(3).unwrap().display_name(), "/b");
    }

    #[test]
    fn feed_dispatches_and_keeps_cumulative_loss() {
        let mut a = Aggregator::new();
        a.feed(&CaptureLine::Cgroup(named(9, Some("/x"))));
        a.feed(&CaptureLine::Period(period(9, 1, 5, 7)));
        a.feed(&CaptureLine::Loss(LossRecord {
            ts_ns: 2,
            ringbuf_full: 5,
            ..Default::default()
        }));
        a.feed(&CaptureLine::Loss(LossRecord {
            ts_ns: 1,
            ringbuf_full: 3,
            cgroup_read: 1,
            ..Default::default()
        }));
        a.feed(&CaptureLine::End(EndRecord {
            ts_ns: 10,
            duration_ns: 1_000,
            reason: crate::model::probe::StopReason::Duration,
            periods: 1,
            lost: 5,
            command_status: None,
            async_unthrottle: 0,
            irq_spans: 0,
            kmsg_period_scaling: 0,
        }));
        assert_eq!(a.periods(), 1);
        assert_eq!(a.name(9).unwrap().path.as_deref(), Some("/x"));
        let l = a.loss().unwrap();
        assert_eq!((l.ringbuf_full, l.cgroup_read, l.ts_ns), (5, 1, 2));
        assert_eq!(a.end().unwrap().duration_ns, 1_000);
    }

    #[test]
    fn period_rescaling_is_noticed() {
        let mut a = Aggregator::new();
        for period_ns in [1_000_000, 2_000_000] {
            let mut p = period(2, 0, 0, 5);
            p.flags = HOW_PERIOD;
            p.period_ns = period_ns;
            a.add_period(&p);
        }
        let c = a.cgroup(2).unwrap();
        assert_eq!(c.stats.period_change(), Some((1_000_000, 2_000_000)));
        assert_eq!(c.stats.period_ns(), Some(2_000_000));
    }

    #[test]
    fn back_to_back_callbacks_form_a_chain() {
        let mut a = Aggregator::new();
        a.add_period(&period(1, 0, 1_000, 10_000)); // ends 11_000
        a.add_period(&period(2, 0, 11_500, 10_000)); // ends 21_500: chained
        a.add_period(&period(3, 0, 22_000, 5_000)); // ends 27_000: chained
        a.add_period(&period(4, 0, 1_000_000, 8_000)); // alone
        let (_, c) = a.cpus().next().unwrap();
        assert_eq!(c.max_chain_ns, 26_000);
        assert_eq!(c.max_callback_ns, 10_000);
    }

    #[test]
    fn absurd_cpu_numbers_do_not_allocate() {
        let mut a = Aggregator::new();
        a.add_period(&period(1, u32::MAX, 0, 1));
        assert_eq!(a.cpus().count(), 0);
        assert_eq!(a.warnings().len(), 1);
        assert!(a.cgroup(1).unwrap().stats.cpus().is_empty());
    }

    #[test]
    fn clamped_values_keep_their_exact_max() {
        let mut a = Aggregator::new();
        a.add_period(&period(1, 0, 0, u64::MAX / 4));
        let d = a.cgroup(1).unwrap().stats.callback_ns().clone();
        assert_eq!(d.max(), u64::MAX / 4);
        assert_eq!(d.quantile(1.0), u64::MAX / 4);
        assert!(d.heap_bytes() <= 16 * 1024);
    }

    fn async_ev(cg: u64, cpu: u32, csd_ts: u64, seg: u32, dur: u64, flags: u32) -> AsyncRecord {
        AsyncRecord {
            ts_ns: csd_ts + u64::from(seg) * 1_000,
            cpu,
            duration_ns: dur,
            cgroup_id: cg,
            csd_ts_ns: csd_ts,
            csd_ns: 0,
            segment: seg,
            unthrottled: 1,
            enqueued: 2,
            runnable: 3,
            flags,
        }
    }

    #[test]
    fn async_segments_go_to_their_cgroups_and_csds_to_their_cpus() {
        use tracer_ebpf::{ASYNC_LAST, HOW_FRAME_FENTRY};
        let probed = HOW_FRAME_FENTRY | HOW_UNTHROTTLE | HOW_ENQUEUE_ENTITY | HOW_RUNNABLE;
        let mut a = Aggregator::new();
        // The timer of cgroup 7 fires on CPU 0 ...
        a.add_period(&period(7, 0, 0, 5_000));
        // ... and CPU 1 unthrottles cgroups 7 and 8 in one CSD (two segments), then 7 again.
        a.add_async(&async_ev(7, 1, 1_000, 0, 600, probed));
        let mut last = async_ev(8, 1, 1_000, 1, 400, probed | ASYNC_LAST);
        last.csd_ns = 1_000;
        a.add_async(&last);
        let mut second = async_ev(7, 1, 9_000, 0, 700, probed | ASYNC_LAST);
        second.csd_ns = 700;
        a.add_async(&second);
        assert_eq!(
            (a.async_events(), a.async_csds(), a.async_empty()),
            (3, 2, 0)
        );
        let c7 = a.cgroup(7).unwrap();
        assert_eq!(c7.stats.periods(), 1);
        let s7 = c7.stats.asyncs().unwrap();
        assert_eq!((s7.csds(), s7.unthrottled()), (2, 2));
        assert_eq!((s7.enqueued(), s7.runnable()), (Some(4), Some(6)));
        assert_eq!(
            (
                s7.per_csd_ns().count(),
                s7.per_csd_ns().sum(),
                s7.per_csd_ns().max()
            ),
            (2, 1_300, 700)
        );
        assert_eq!(s7.cpus().iter().collect::<Vec<_>>(), vec![1]);
        // Seen only in a CSD: a cgroup with no callback of its own (its timer was elsewhere).
        let c8 = a.cgroup(8).unwrap();
        assert_eq!(c8.stats.periods(), 0);
        assert_eq!(c8.stats.asyncs().unwrap().csds(), 1);
        // CPU 1 ran no period timer but is listed, with whole-CSD time from the last events.
        let cpus: Vec<_> = a.cpus().map(|(c, s)| (c, *s)).collect();
        assert_eq!(cpus.len(), 2);
        let (n, c1) = cpus[1];
        assert_eq!(n, 1);
        assert_eq!(c1.period_timers, 0);
        assert_eq!(
            (c1.async_csds, c1.async_ns, c1.max_async_ns),
            (2, 1_700, 1_000)
        );
        assert_eq!(cpus[0].1.async_csds, 0);
        assert!(a.cgroup(0).is_none());
    }

    #[test]
    fn listed_and_empty_csds() {
        use tracer_ebpf::{
            ASYNC_EMPTY, ASYNC_LAST, ASYNC_SHARED, ASYNC_TRUNCATED, HOW_FRAME_TRACEPOINT,
        };
        let listed = HOW_FRAME_TRACEPOINT | ASYNC_LISTED | ASYNC_SHARED | HOW_RUNNABLE;
        let mut a = Aggregator::new();
        // One CSD listing two cgroups: each gets the whole (shared) CSD time, the CPU once.
        a.add_async(&async_ev(7, 0, 100, 0, 900, listed));
        let mut l = async_ev(8, 0, 100, 1, 900, listed | ASYNC_LAST | ASYNC_TRUNCATED);
        l.csd_ns = 900;
        a.add_async(&l);
        // A CSD that found nothing: CPU time, no cgroup.
        let mut e = async_ev(0, 0, 5_000, 0, 300, HOW_FRAME_TRACEPOINT | ASYNC_LISTED);
        e.flags |= ASYNC_EMPTY | ASYNC_LAST;
        e.unthrottled = 0;
        e.csd_ns = 300;
        a.add_async(&e);
        // Listed counts are real without an unthrottle probe; no enqueue probe, no figure.
        let s7 = a.cgroup(7).unwrap().stats.asyncs().unwrap().clone();
        assert_eq!(
            (s7.unthrottled(), s7.enqueued(), s7.runnable()),
            (1, None, Some(3))
        );
        assert_eq!(s7.per_csd_ns().max(), 900);
        assert!(s7.flags() & ASYNC_LISTED != 0);
        assert!(a.cgroup(0).is_none(), "an empty CSD names no cgroup");
        let (_, c0) = a.cpus().next().unwrap();
        assert_eq!((c0.async_csds, c0.async_ns, c0.async_empty), (2, 1_200, 1));
        assert_eq!((a.async_csds(), a.async_empty()), (2, 1));
        assert!(
            a.warnings()
                .iter()
                .any(|w| w.contains("listed more than 32"))
        );
        // Replayed like any other line.
        let mut b = Aggregator::new();
        b.feed(&CaptureLine::AsyncUnthrottle(l));
        assert_eq!(b.async_events(), 1);
    }

    /// 2,000 cgroups (the LKML scale figure) whose every histogram has grown to its cap: the
    /// worst case the bounds allow. Plus a realistic load for comparison.
    #[test]
    fn memory_bound_for_2000_cgroups() {
        let all = HOW_UNTHROTTLE | HOW_ENQUEUE_ENTITY | HOW_RUNNABLE | HOW_LOOPS;
        let mut worst = Aggregator::new();
        let mut typical = Aggregator::new();
        for id in 1..=2_000u64 {
            let mut p = period(id, (id % 4096) as u32, id, CALLBACK_NS_CAP);
            p.flags = all;
            p.unthrottled = COUNT_CAP as u32;
            p.enqueued = COUNT_CAP as u32;
            p.runnable = COUNT_CAP as u32;
            worst.add_period(&p);
            p.duration_ns = 1;
            worst.add_period(&p);
            // And async work on 6.3+: a CSD histogram grown to its cap, on a far CPU.
            let mut e = async_ev(id, ((id + 1) % 4096) as u32, id, 0, CALLBACK_NS_CAP, all);
            worst.add_async(&e);
            e.duration_ns = 1;
            worst.add_async(&e);
            // Every CPU of the bitmap in one period, and more period changes than are kept.
            let mut sp = period(id, 0, id + 1, 5);
            sp.flags = all | HOW_SPREAD;
            sp.spread_cpus = CpuSet::from_words(&[u64::MAX; tracer_ebpf::SPREAD_WORDS]);
            for k in 0..(MAX_PERIOD_CHANGES as u64 + 2) {
                sp.period_ns = 1_000_000 + k % 2;
                worst.add_period(&sp);
            }
            // 384 CPUs, 1-4 ms distributions, a few hundred enqueues.
            let mut q = period(id, (id % 384) as u32, id, 4_000_000);
            q.flags = all;
            q.unthrottled = 384;
            q.enqueued = 700;
            q.runnable = 500;
            typical.add_period(&q);
        }
        // Timer interrupts on 4096 CPUs with histograms grown to their caps.
        for cpu in 0..4096u32 {
            for (d, t) in [(CALLBACK_NS_CAP, COUNT_CAP as u32), (1, 1)] {
                worst.add_irq_span(&IrqSpanRecord {
                    ts_ns: 1,
                    cpu,
                    duration_ns: d,
                    timers: t,
                    timers_ns: d,
                    flags: 0,
                });
            }
        }
        let w = worst.approx_bytes();
        let t = typical.approx_bytes();
        eprintln!(
            "2000 cgroups: worst {} KB, typical {} KB",
            w / 1024,
            t / 1024
        );
        // About 25 KB a cgroup (spread and precursors included) plus under 4 KB a CPU for
        // timer-interrupt spans.
        assert!(w < 72 * 1024 * 1024, "worst case {w} bytes");
        assert!(t < 32 * 1024 * 1024, "typical {t} bytes");
    }

    fn in_span(mut p: PeriodRecord, span_ts: u64) -> PeriodRecord {
        p.flags |= HOW_IN_SPAN;
        p.span_ts_ns = span_ts;
        p
    }

    fn span(cpu: u32, ts: u64, dur: u64, timers: u32, timers_ns: u64) -> IrqSpanRecord {
        IrqSpanRecord {
            ts_ns: ts,
            cpu,
            duration_ns: dur,
            timers,
            timers_ns,
            flags: tracer_ebpf::HOW_FRAME_TRACEPOINT,
        }
    }

    #[test]
    fn spans_learn_their_callbacks() {
        let mut a = Aggregator::new();
        // One interrupt on CPU 2 runs cgroup 7's timer twice and cgroup 8's once.
        a.add_period(&in_span(period(7, 2, 1_100, 300), 1_000));
        a.add_period(&in_span(period(8, 2, 1_450, 100), 1_000));
        a.add_period(&in_span(period(7, 2, 1_600, 200), 1_000));
        a.add_irq_span(&span(2, 1_000, 1_000, 3, 600));
        // A shorter one on CPU 2 with only cgroup 8.
        a.add_period(&in_span(period(8, 2, 5_100, 50), 5_000));
        a.add_irq_span(&span(2, 5_000, 400, 1, 50));
        // A span whose callbacks were never seen (lost lines): per-CPU figures only.
        a.add_irq_span(&span(3, 9_000, 2_000, 1, 1_500));
        // A callback outside any traced span.
        a.add_period(&period(9, 3, 20_000, 10));
        assert_eq!((a.irq_spans(), a.periods_in_span(), a.periods()), (3, 4, 5));
        let s2 = a.cpu_spans(2).unwrap();
        assert_eq!((s2.span_ns().count(), s2.span_ns().max()), (2, 1_000));
        assert_eq!(s2.timers_per_span().max(), 3);
        assert_eq!(s2.timers_ns(), 650);
        assert!((s2.timer_share() - 650.0 / 1_400.0).abs() < 1e-9);
        assert_eq!(s2.worst().ts_ns, 1_000);
        let w7 = *a.cgroup(7).unwrap().stats.worst_span().unwrap();
        assert_eq!(
            w7,
            CgroupSpan {
                cpu: 2,
                ts_ns: 1_000,
                duration_ns: 1_000,
                timers: 3,
                timers_ns: 600,
                own_timers: 2,
                own_ns: 500,
            }
        );
        // Cgroup 8's worst is the long shared interrupt, not its own short one.
        let w8 = a.cgroup(8).unwrap().stats.worst_span().copied().unwrap();
        assert_eq!((w8.duration_ns, w8.own_ns, w8.own_timers), (1_000, 100, 1));
        assert!(a.cgroup(9).unwrap().stats.worst_span().is_none());
        assert_eq!(a.worst_irq_span().unwrap().cpu, 3);
        // CPU 3 is listed for its span even though its callback is the only timer there.
        assert_eq!(a.cpus().map(|(c, _)| c).collect::<Vec<_>>(), vec![2, 3]);
        // Replayed like any line.
        let mut b = Aggregator::new();
        b.feed(&CaptureLine::IrqSpan(span(0, 1, 2, 1, 1)));
        assert_eq!(b.irq_spans(), 1);
    }

    #[test]
    fn a_new_span_forgets_an_unclosed_one() {
        let mut a = Aggregator::new();
        a.add_period(&in_span(period(7, 0, 110, 10), 100));
        // The line of span 100 was lost; span 200 holds only cgroup 8.
        a.add_period(&in_span(period(8, 0, 210, 10), 200));
        a.add_irq_span(&span(0, 200, 50, 1, 10));
        assert!(a.cgroup(7).unwrap().stats.worst_span().is_none());
        assert_eq!(
            a.cgroup(8).unwrap().stats.worst_span().unwrap().duration_ns,
            50
        );
    }

    #[test]
    fn spread_per_period_from_the_probe_and_the_csds() {
        use tracer_ebpf::{ASYNC_LAST, HOW_FRAME_FENTRY};
        let mut a = Aggregator::new();
        let mut p = period(7, 0, 1_000, 10);
        p.flags = HOW_UNTHROTTLE | HOW_SPREAD;
        p.spread_cpus = CpuSet::parse_list("0-2").unwrap();
        a.add_period(&p);
        // A CSD on CPU 5 after it belongs to that period; CPU 1 again adds nothing.
        let seg = HOW_FRAME_FENTRY | HOW_UNTHROTTLE | ASYNC_LAST;
        a.add_async(&async_ev(7, 5, 2_000, 0, 10, seg));
        a.add_async(&async_ev(7, 1, 2_500, 0, 10, seg));
        // Next period: only CPU 3, plus an overflow CPU from the kernel.
        p.ts_ns = 10_000;
        p.spread_cpus = CpuSet::parse_list("3").unwrap();
        p.spread_overflow = 2;
        a.add_period(&p);
        let sp = a.cgroup(7).unwrap().stats.spread().unwrap().clone();
        let d = sp.per_period();
        assert_eq!((d.count(), d.max(), d.min()), (2, 4, 1));
        assert_eq!(sp.cpus().iter().collect::<Vec<_>>(), vec![0, 1, 2, 3, 5]);
        assert_eq!(sp.overflow(), 2);
        assert_eq!(sp.sources(), SPREAD_FROM_PROBE | SPREAD_FROM_CSD);
        // The open period is not counted twice when asked again.
        assert_eq!(sp.per_period().count(), 2);
        // A CSD before the cgroup's first callback has no period to go to.
        a.add_async(&async_ev(9, 4, 50, 0, 10, seg));
        let s9 = a.cgroup(9).unwrap().stats.spread().unwrap();
        assert_eq!((s9.unplaced_csds(), s9.per_period().count()), (1, 0));
        assert_eq!(s9.cpus().iter().collect::<Vec<_>>(), vec![4]);
    }

    #[test]
    fn spread_without_the_probe_uses_the_timer_cpu() {
        let mut a = Aggregator::new();
        let mut p = period(7, 1, 1_000, 10);
        p.flags = HOW_RUNNABLE;
        p.runnable = 3;
        a.add_period(&p);
        p.ts_ns = 2_000;
        p.runnable = 0;
        a.add_period(&p);
        let sp = a.cgroup(7).unwrap().stats.spread().unwrap().clone();
        let d = sp.per_period();
        assert_eq!((d.count(), d.min(), d.max()), (2, 0, 1));
        assert_eq!(sp.sources(), SPREAD_FROM_TIMER_CPU);
        // Unresolved callbacks have no spread.
        a.add_period(&period(0, 0, 5, 1));
        assert!(a.cgroup(0).unwrap().stats.spread().is_none());
    }

    #[test]
    fn precursors_are_counted() {
        let mut a = Aggregator::new();
        let mut p = period(7, 0, 1_000, 500_000);
        p.flags = HOW_PERIOD | HOW_LOOPS;
        p.period_ns = 1_000_000;
        p.quota_ns = 500_000;
        p.loops = 1;
        a.add_period(&p);
        assert!(a.cgroup(7).unwrap().stats.precursors().is_none());
        // Overran its period with 3 passes; then the kernel doubled the period.
        p.ts_ns = 2_000;
        p.duration_ns = 1_200_000;
        p.loops = 3;
        a.add_period(&p);
        p.ts_ns = 3_000;
        p.duration_ns = 10;
        p.loops = 1;
        p.period_ns = 2_000_000;
        p.quota_ns = 1_000_000;
        a.add_period(&p);
        let pr = a.cgroup(7).unwrap().stats.precursors().unwrap().clone();
        assert_eq!((pr.over_period(), pr.multi_pass()), (1, 1));
        assert_eq!(
            pr.changes(),
            &[PeriodChange {
                ts_ns: 3_000,
                cpu: 0,
                from_ns: 1_000_000,
                to_ns: 2_000_000,
                from_quota_ns: 500_000,
                to_quota_ns: 1_000_000,
            }]
        );
        // A callback without the period read is no change.
        p.period_ns = 0;
        a.add_period(&p);
        assert_eq!(
            a.cgroup(7)
                .unwrap()
                .stats
                .precursors()
                .unwrap()
                .changes()
                .len(),
            1
        );
        // Messages and file periods are kept for the report.
        a.feed(&CaptureLine::KmsgPeriodScaling(PeriodScaling {
            ts_us: 3,
            cpu: 0,
            scaled_up: true,
            period_us: 2_000,
            quota_us: 1_000,
        }));
        assert_eq!(a.kmsgs().len(), 1);
        let mut n = named(7, Some("/x"));
        n.period_us = Some(1_000);
        a.add_cgroup(n.clone());
        n.period_us = Some(2_000);
        a.add_cgroup(n.clone());
        a.add_cgroup(n);
        assert_eq!(a.file_periods(7), &[1_000, 2_000]);
        assert!(a.file_periods(8).is_empty());
    }
}
