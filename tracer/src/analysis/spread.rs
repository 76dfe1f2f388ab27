//! On how many CPUs a cgroup's cfs_rqs were unthrottled, period by period (what `crash>
//! runq -g` shows as one throttled group on every CPU).
use tracer_ebpf::{HOW_RUNNABLE, HOW_SPREAD, SPREAD_CPUS};

use super::CALLBACK_SIGFIG;
use super::distribution::Distribution;
use crate::model::cpuset::CpuSet;
use crate::model::records::{AsyncRecord, PeriodRecord};

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
    pub(super) per_period: Distribution,
    pub(super) cpus: CpuSet,
    /// The period in progress: its callback's start and the CPUs seen so far.
    pub(super) open: Option<(u64, CpuSet)>,
    pub(super) overflow: u64,
    /// CSDs with no period of their own to go to (before the cgroup's first callback).
    pub(super) unplaced_csds: u64,
    pub(super) sources: u32,
}

impl SpreadStats {
    pub(super) fn new() -> Self {
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

    pub(super) fn start_period(&mut self, p: &PeriodRecord) {
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

    pub(super) fn add_csd(&mut self, a: &AsyncRecord) {
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

    pub(super) fn heap_bytes(&self) -> usize {
        std::mem::size_of::<Self>() + self.per_period.heap_bytes() + self.cpus.heap_bytes()
    }
}
