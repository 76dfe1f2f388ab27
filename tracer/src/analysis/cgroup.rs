//! Everything recorded for one cgroup's period timer, and the view the report reads.
use tracer_ebpf::{
    HOW_ENQUEUE_ENTITY, HOW_ENQUEUE_TASK_FAIR, HOW_LOOPS, HOW_PERIOD, HOW_QUEUED, HOW_RUNNABLE,
    HOW_UNTHROTTLE,
};

use super::asyncs::AsyncStats;
use super::distribution::Distribution;
use super::precursors::{MAX_PERIOD_CHANGES, PeriodChange, Precursors};
use super::spread::SpreadStats;
use super::{MAX_CPUS, UNRESOLVED_ID};
use crate::model::cpuset::CpuSet;
use crate::model::records::cgroup_name;
use crate::model::records::{AsyncRecord, CgroupRecord, PeriodRecord, UnsentPeriodsRecord};

/// Everything recorded for one cgroup's period timer.
#[derive(Clone, Debug)]
pub struct CgroupStats {
    pub(super) callback_ns: Distribution,
    pub(super) unthrottled: Option<Distribution>,
    pub(super) enqueued: Option<Distribution>,
    /// Tasks queued under the cfs_rqs unthrottled per period (`HOW_QUEUED`).
    pub(super) queued: Option<Distribution>,
    pub(super) runnable: Option<Distribution>,
    pub(super) max_loops: Option<u32>,
    pub(super) cpus: CpuSet,
    pub(super) bandwidth: KernelBandwidth,
    pub(super) flags: u32,
    pub(super) seen: Extent,
    /// Boxed: most cgroups (and every one on a pre-6.3 kernel) have none.
    pub(super) asyncs: Option<Box<AsyncStats>>,
    /// The longest timer-interrupt span that ran one of its callbacks.
    pub(super) worst_span: Option<CgroupSpan>,
    pub(super) spread: Option<Box<SpreadStats>>,
    /// Boxed: only cgroups whose timer showed a precursor have one.
    pub(super) precursors: Option<Box<Precursors>>,
}

/// `cfs_bandwidth` as the kernel side read it at each callback.
#[derive(Clone, Copy, Debug)]
pub(super) struct KernelBandwidth {
    /// Last read (None until a callback carried one); a quota of `u64::MAX` is none.
    period_ns: Option<u64>,
    quota_ns: Option<u64>,
    /// Smallest and largest period seen: they differ when the kernel rescaled it.
    period_min_ns: u64,
    period_max_ns: u64,
}

impl Default for KernelBandwidth {
    fn default() -> Self {
        KernelBandwidth {
            period_ns: None,
            quota_ns: None,
            period_min_ns: u64::MAX,
            period_max_ns: 0,
        }
    }
}

impl KernelBandwidth {
    #[inline]
    fn saw(&mut self, period_ns: u64, quota_ns: u64) {
        self.period_ns = Some(period_ns);
        self.quota_ns = Some(quota_ns);
        self.period_min_ns = self.period_min_ns.min(period_ns);
        self.period_max_ns = self.period_max_ns.max(period_ns);
    }
}

/// The first and last event start seen: events arrive in ring-buffer order, not time order.
#[derive(Clone, Copy, Debug)]
pub(super) struct Extent {
    pub(super) first_ns: u64,
    pub(super) last_ns: u64,
}

impl Extent {
    pub(super) fn at(ts_ns: u64) -> Self {
        Extent {
            first_ns: ts_ns,
            last_ns: ts_ns,
        }
    }

    #[inline]
    pub(super) fn saw(&mut self, ts_ns: u64) {
        self.first_ns = self.first_ns.min(ts_ns);
        self.last_ns = self.last_ns.max(ts_ns);
    }
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
    pub(super) fn new(ts: u64) -> Self {
        CgroupStats {
            callback_ns: Distribution::callback(),
            unthrottled: None,
            enqueued: None,
            queued: None,
            runnable: None,
            max_loops: None,
            cpus: CpuSet::default(),
            bandwidth: KernelBandwidth::default(),
            flags: 0,
            seen: Extent::at(ts),
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

    pub(super) fn precursors_mut(&mut self) -> &mut Precursors {
        self.precursors.get_or_insert_with(Default::default)
    }

    pub(super) fn add_span(&mut self, s: CgroupSpan) {
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
    pub(super) fn add_async(&mut self, a: &AsyncRecord) {
        self.asyncs
            .get_or_insert_with(|| Box::new(AsyncStats::new()))
            .add(a);
        if a.cgroup_id != UNRESOLVED_ID {
            self.spread
                .get_or_insert_with(|| Box::new(SpreadStats::new()))
                .add_csd(a);
        }
        self.seen.saw(a.ts_ns);
    }

    /// Async-unthrottle CSD work for this cgroup; None if none was seen.
    pub fn asyncs(&self) -> Option<&AsyncStats> {
        self.asyncs.as_deref()
    }

    #[inline]
    /// Callbacks whose events were lost, from the kernel's sums (a delta between two of its
    /// cumulative lines): counts, time and worst stay exact.
    pub(super) fn add_unsent(&mut self, d: &UnsentDelta) {
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

    pub(super) fn add(&mut self, p: &PeriodRecord) {
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
            && let Some(old) = self
                .bandwidth
                .period_ns
                .filter(|&o| o > 0 && o != p.period_ns)
        {
            let change = PeriodChange {
                ts_ns: p.ts_ns,
                cpu: p.cpu,
                from_ns: old,
                to_ns: p.period_ns,
                from_quota_ns: self.bandwidth.quota_ns.unwrap_or(0),
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
            self.bandwidth.saw(p.period_ns, p.quota_ns);
        }
        self.flags |= p.flags;
        self.seen.saw(p.ts_ns);
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
        self.bandwidth.period_ns
    }

    /// `cfs_bandwidth.quota` last read; `Some(u64::MAX)` is no quota.
    pub fn quota_ns(&self) -> Option<u64> {
        self.bandwidth.quota_ns
    }

    /// Smallest and largest period seen, when they differ: the kernel rescales the period
    /// itself ("period too short, scaling up") when a callback overruns it.
    pub fn period_change(&self) -> Option<(u64, u64)> {
        let b = &self.bandwidth;
        (b.period_ns.is_some() && b.period_min_ns != b.period_max_ns)
            .then_some((b.period_min_ns, b.period_max_ns))
    }

    /// OR of the events' `HOW_*` flags.
    pub fn flags(&self) -> u32 {
        self.flags
    }

    pub fn first_ts_ns(&self) -> u64 {
        self.seen.first_ns
    }

    pub fn last_ts_ns(&self) -> u64 {
        self.seen.last_ns
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

/// One cgroup as seen by the report: its stats and its name, if it was named.
#[derive(Clone, Copy, Debug)]
pub struct CgroupView<'a> {
    pub id: u64,
    pub stats: &'a CgroupStats,
    pub record: Option<&'a CgroupRecord>,
}

impl CgroupView<'_> {
    /// Its display name, by the one rule ([`cgroup_name`]).
    pub fn display_name(&self) -> std::borrow::Cow<'_, str> {
        cgroup_name(self.id, self.record.and_then(|r| r.path.as_deref()))
    }
}

/// What one `unsent_periods` line adds to the one before it for the same cgroup.
pub struct UnsentDelta {
    pub(super) periods: u64,
    pub(super) callback_ns_sum: u64,
    pub(super) callback_ns_max: u64,
    pub(super) over_period: u64,
    pub(super) multi_pass: u64,
    pub(super) max_loops: u32,
    pub(super) buckets: Vec<(u32, u64)>,
}

impl UnsentDelta {
    pub(super) fn between(prev: Option<&UnsentPeriodsRecord>, now: &UnsentPeriodsRecord) -> Self {
        let zero = UnsentPeriodsRecord::default();
        let prev = prev.unwrap_or(&zero);
        let before = |b: u32| {
            prev.callback_log2
                .iter()
                .find(|(pb, _)| *pb == b)
                .map_or(0, |(_, n)| u64::from(*n))
        };
        UnsentDelta {
            periods: now.sums.periods.saturating_sub(prev.sums.periods),
            callback_ns_sum: now
                .sums
                .callback_ns_sum
                .saturating_sub(prev.sums.callback_ns_sum),
            callback_ns_max: now.sums.callback_ns_max,
            over_period: now.sums.over_period.saturating_sub(prev.sums.over_period),
            multi_pass: now.sums.multi_pass.saturating_sub(prev.sums.multi_pass),
            max_loops: now.sums.max_loops,
            buckets: now
                .callback_log2
                .iter()
                .map(|&(b, n)| (b, u64::from(n).saturating_sub(before(b))))
                .filter(|(_, n)| *n > 0)
                .collect(),
        }
    }
}
