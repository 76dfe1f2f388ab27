//! A distribution: quantiles from a small auto-resizing histogram, with exact count, sum, min
//! and max. Every per-cgroup and per-CPU figure is one.
use hdrhistogram::Histogram;

use super::{CALLBACK_NS_CAP, CALLBACK_SIGFIG, COUNT_CAP, COUNT_SIGFIG};

/// A distribution: a small auto-resizing histogram for quantiles, plus exact count, sum, min
/// and max.
#[derive(Clone, Debug)]
pub struct Distribution {
    // u32 buckets halve the memory; hdrhistogram saturates (never wraps) a full bucket, and a
    // cgroup's timer fires at most 1000 times a second, so one bucket needs 49 days to fill.
    pub(super) hist: Histogram<u32>,
    pub(super) cap: u64,
    pub(super) count: u64,
    pub(super) sum: u64,
    pub(super) min: u64,
    pub(super) max: u64,
}

impl Distribution {
    pub(super) fn new(sigfig: u8, cap: u64) -> Self {
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

    pub fn callback() -> Self {
        Self::new(CALLBACK_SIGFIG, CALLBACK_NS_CAP)
    }

    pub fn counts() -> Self {
        Self::new(COUNT_SIGFIG, COUNT_CAP)
    }

    /// Per-CSD times: the callback range, but quantiles within 1/16 (min, max and mean stay
    /// exact), so a cgroup with async work still fits the per-cgroup memory bound.
    pub(super) fn csd() -> Self {
        Self::new(COUNT_SIGFIG, CALLBACK_NS_CAP)
    }

    #[inline]
    pub fn record(&mut self, v: u64) {
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
    pub(super) fn absorb_log2(&mut self, count: u64, sum: u64, max: u64, buckets: &[(u32, u64)]) {
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

    /// Add `o`'s values (both made by the same constructor, so the same precision and cap).
    pub fn merge(&mut self, o: &Distribution) {
        if self.hist.add(&o.hist).is_err() {
            // Only a failed resize gets here; keep the counts by recording o's values one by one.
            for v in o.hist.iter_recorded() {
                self.hist
                    .saturating_record_n(v.value_iterated_to(), v.count_at_value());
            }
        }
        self.count += o.count;
        self.sum = self.sum.saturating_add(o.sum);
        self.min = self.min.min(o.min);
        self.max = self.max.max(o.max);
    }

    /// How many values fall at or below each of the ascending `bounds`, bucket by bucket (not
    /// cumulative), then the count above the last bound: one entry more than `bounds`. A
    /// histogram bucket counts toward the first bound at or above its lowest value, so a value
    /// can sit above its bound by the histogram's precision (1 % for callback times), never
    /// below. The counts add up to the exact `count()`.
    pub fn bucket_counts(&self, bounds: &[u64]) -> Vec<u64> {
        let mut out = vec![0u64; bounds.len() + 1];
        let mut below = 0u64;
        for v in self.hist.iter_recorded() {
            let low = self.hist.lowest_equivalent(v.value_iterated_to());
            let i = bounds.partition_point(|&b| b < low);
            if i < bounds.len() {
                out[i] += v.count_since_last_iteration();
                below += v.count_since_last_iteration();
            }
        }
        // Above every bound: whatever the bounded buckets did not take, so `+Inf` == count even
        // if a histogram bucket saturated.
        out[bounds.len()] = self.count.saturating_sub(below);
        out
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
