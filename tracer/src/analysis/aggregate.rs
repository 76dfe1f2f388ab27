//! The aggregator: every capture line (or `watch` interval) added up into per-cgroup and
//! per-CPU figures, the kernel's own sums folded in where events were lost.
use tracer_ebpf::{
    ASYNC_EMPTY, ASYNC_LAST, ASYNC_SHARED, ASYNC_TRUNCATED, HOW_IN_SPAN, HOW_REOPENED,
};

use std::collections::HashMap;

use super::IdMap;
use super::MAX_CPUS;
use super::cgroup::{CgroupSpan, CgroupStats, CgroupView, Extent, UnsentDelta};
use super::cpu::{CpuStats, SpanStats};
use super::forecast::{ForecastMoments, SecondWork};
use crate::model::records::{
    AsyncRecord, CaptureLine, CgroupRecord, CpuTotalsRecord, ENQUEUED_FROM, EndRecord,
    IrqSpanRecord, LossRecord, PeriodRecord, PeriodScaling, QUEUED_FROM, UnsentPeriodsRecord,
};

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

/// Everything a capture (or a `watch` interval) adds up to.
#[derive(Clone, Debug, Default)]
pub struct Aggregator {
    cgroups: IdMap<CgroupStats>,
    names: IdMap<CgroupRecord>,
    cpus: Vec<CpuStats>,
    periods: u64,
    /// None before the first event.
    seen: Option<Extent>,
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
    /// The lockup forecast's fits.
    forecast: ForecastMoments,
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
        self.saw_window(p.ts_ns, p.duration_ns);
        // Counted without a branch: this runs for every callback.
        self.reopened += u64::from(p.flags & HOW_REOPENED != 0);
        if p.flags & HOW_IN_SPAN != 0 {
            self.periods_in_span += 1;
            self.note_in_span(p);
        }
        self.cgroup_mut(p.cgroup_id, p.ts_ns).add(p);
        if let Some(cpu) = self.cpu_index(p.cpu) {
            self.cpus[cpu].add(p);
        }
        let second = if p.flags & ENQUEUED_FROM != 0 {
            Some((SecondWork::Enqueued, p.enqueued))
        } else if p.flags & QUEUED_FROM != 0 {
            Some((SecondWork::Queued, p.queued))
        } else {
            None
        };
        self.forecast
            .add_callback(p.duration_ns, p.counted_unthrottled(), second);
    }

    /// A cgroup's stats, started at `ts_ns` if new.
    fn cgroup_mut(&mut self, id: u64, ts_ns: u64) -> &mut CgroupStats {
        self.cgroups
            .entry(id)
            .or_insert_with(|| CgroupStats::new(ts_ns))
    }

    /// The CPU's index into `cpus`, grown to hold it; None (and counted) past [`MAX_CPUS`].
    fn cpu_index(&mut self, cpu: u32) -> Option<usize> {
        let cpu = cpu as usize;
        if cpu >= MAX_CPUS {
            self.cpu_out_of_range += 1;
            return None;
        }
        if cpu >= self.cpus.len() {
            self.cpus.resize(cpu + 1, CpuStats::default());
        }
        Some(cpu)
    }

    /// A CPU's span stats (`cpu` below [`MAX_CPUS`]), started if new.
    fn span_mut(&mut self, cpu: usize) -> &mut SpanStats {
        if cpu >= self.spans.len() {
            self.spans.resize(cpu + 1, None);
        }
        self.spans[cpu].get_or_insert_with(|| Box::new(SpanStats::new()))
    }

    /// The trace's extent: first start, last start, last end.
    fn saw_window(&mut self, ts_ns: u64, duration_ns: u64) {
        self.seen.get_or_insert(Extent::at(ts_ns)).saw(ts_ns);
        self.last_end_ns = self.last_end_ns.max(ts_ns.saturating_add(duration_ns));
    }

    /// One async-unthrottle event: per-CPU CSD time from each CSD's last event, per-cgroup
    /// work from every event that names a cgroup (or that would have, under id 0).
    pub fn add_async(&mut self, a: &AsyncRecord) {
        self.async_events += 1;
        self.async_flags_seen |= a.flags;
        self.saw_window(a.ts_ns, a.duration_ns);
        // A CSD's flags are final on its last event.
        let last = a.flags & ASYNC_LAST != 0;
        self.async_csds += u64::from(last);
        self.async_empty += u64::from(last && a.flags & ASYNC_EMPTY != 0);
        self.async_truncated += u64::from(last && a.flags & ASYNC_TRUNCATED != 0);
        if a.flags & ASYNC_EMPTY == 0 {
            self.cgroup_mut(a.cgroup_id, a.ts_ns).add_async(a);
            self.forecast.add_csd(
                a.duration_ns,
                a.unthrottled,
                if a.flags & ENQUEUED_FROM != 0 {
                    a.enqueued
                } else {
                    0
                },
                a.flags & ASYNC_SHARED != 0,
            );
        }
        if let Some(cpu) = self.cpu_index(a.cpu) {
            self.cpus[cpu].add_async(a);
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
        self.saw_window(x.ts_ns, x.duration_ns);
        let Some(cpu) = self.cpu_index(x.cpu) else {
            return;
        };
        self.span_mut(cpu).add(x);
        self.forecast.add_span(x.duration_ns, x.timers);
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

    /// The lockup forecast's running fits.
    pub fn forecast(&self) -> &ForecastMoments {
        &self.forecast
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
            Some(o) => o.combine(&l, o.ts_ns.max(l.ts_ns), u64::max),
        });
    }

    pub fn feed(&mut self, line: &CaptureLine) {
        match line {
            CaptureLine::Period(p) => self.add_period(p),
            CaptureLine::AsyncUnthrottle(a) => self.add_async(a),
            CaptureLine::IrqSpan(x) => self.add_irq_span(x),
            CaptureLine::KmsgPeriodScaling(k) => self.add_kmsg(k.clone()),
            CaptureLine::Cgroup(c) => self.add_cgroup((**c).clone()),
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
        self.cgroup_mut(t.id, t.ts_ns).add_unsent(&d);
    }

    /// A CPU's timer interrupts as the kernel summed them: its worst span counts even when
    /// that span's event was lost.
    pub fn add_cpu_totals(&mut self, t: &CpuTotalsRecord) {
        self.kernel_cpus.insert(t.cpu, t.clone());
        if t.spans == 0 || t.cpu as usize >= MAX_CPUS {
            return;
        }
        let Some(cpu) = self.cpu_index(t.cpu) else {
            return;
        };
        let s = self.span_mut(cpu);
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
        self.seen.map(|e| e.first_ns)
    }

    /// Start of the last callback.
    pub fn last_ts_ns(&self) -> Option<u64> {
        self.seen.map(|e| e.last_ns)
    }

    /// First callback's start to last callback's end (0 with no callbacks).
    pub fn span_ns(&self) -> u64 {
        self.seen
            .map_or(0, |e| self.last_end_ns.saturating_sub(e.first_ns))
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
