//! Figures from capture lines: per-cgroup and per-CPU distributions, spread, precursors,
//! async work, timer-interrupt spans, and the headroom judgement. Knows nothing of aya, the
//! report or rendering.
//!
//! Memory is the constraint that shapes this room: a node can have thousands of cgroups with a
//! quota, and `watch` keeps one state per cgroup for as long as it runs. Every histogram starts
//! small and auto-resizes only up to what was actually recorded, with hard caps, so the worst
//! case is bounded (about 25 KB a cgroup and 4 KB a CPU, see `memory_bound_for_2000_cgroups`)
//! and the typical case is a few KB.
pub mod aggregate;
pub mod asyncs;
pub mod cgroup;
pub mod cpu;
pub mod distribution;
pub mod forecast;
pub mod headroom;
pub mod precursors;
pub mod spread;
#[cfg(test)]
mod tests;

pub use aggregate::Aggregator;
pub use cgroup::{CgroupSpan, CgroupStats, CgroupView};
pub use distribution::{Distribution, log2_bounds};

/// Cgroup ids are kernfs inode numbers: rustc-hash's multiplicative hash is plenty and much
/// cheaper than SipHash on the per-event path.
pub(crate) type IdMap<V> = rustc_hash::FxHashMap<u64, V>;

/// Events whose timer could not be mapped to a cgroup carry id 0 and are kept under it.
pub use crate::model::records::{UNRESOLVED_ID, UNRESOLVED_NAME};

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
