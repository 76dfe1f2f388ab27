//! The lockup precursors counted per cgroup: period changes, callbacks that took their whole
//! period, several distribute passes in one callback.

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
    pub(super) changes: Vec<PeriodChange>,
    pub(super) changes_dropped: u64,
    pub(super) over_period: u64,
    pub(super) multi_pass: u64,
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
