//! A cgroup's async-unthrottle work (6.3+): CSDs on the CPUs that hold its throttled cfs_rqs.
use tracer_ebpf::{
    ASYNC_LISTED, HOW_ENQUEUE_ENTITY, HOW_ENQUEUE_TASK_FAIR, HOW_RUNNABLE, HOW_UNTHROTTLE,
};

use super::MAX_CPUS;
use super::distribution::Distribution;
use crate::model::cpuset::CpuSet;
use crate::model::records::AsyncRecord;

/// One cgroup's async-unthrottle work: CSDs on the CPUs that hold its throttled cfs_rqs,
/// queued by its period timer on another CPU (6.3+).
#[derive(Clone, Debug)]
pub struct AsyncStats {
    pub(super) csds: u64,
    pub(super) unthrottled: u64,
    pub(super) enqueued: Option<u64>,
    pub(super) runnable: Option<u64>,
    /// Its time in each CSD: its segment, or (listed mode) the whole CSD, shared.
    pub(super) per_csd_ns: Distribution,
    pub(super) cpus: CpuSet,
    pub(super) flags: u32,
    /// (cpu, CSD start) of its last event: a CSD counts once even if split.
    pub(super) last_csd: (u32, u64),
}

impl AsyncStats {
    pub(super) fn new() -> Self {
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
    pub(super) fn add(&mut self, a: &AsyncRecord) {
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

    pub(super) fn heap_bytes(&self) -> usize {
        std::mem::size_of::<Self>() + self.per_csd_ns.heap_bytes() + self.cpus.heap_bytes()
    }
}
