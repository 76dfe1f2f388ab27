//! Per-CPU figures: the period timers a CPU ran, its CSDs, and its timer interrupts.
use tracer_ebpf::{ASYNC_EMPTY, ASYNC_LAST};

use super::CHAIN_GAP_NS;
use super::distribution::Distribution;
use crate::model::records::{AsyncRecord, IrqSpanRecord, PeriodRecord};

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
    pub(super) chain_ns: u64,
    pub(super) chain_end_ns: u64,
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
    pub(super) fn add(&mut self, p: &PeriodRecord) {
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
    pub(super) fn add_async(&mut self, a: &AsyncRecord) {
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
    pub(super) span_ns: Distribution,
    pub(super) timers_per_span: Distribution,
    pub(super) timers_ns: u64,
    pub(super) worst: IrqSpanRecord,
    /// The kernel's own worst span of this CPU, when it is longer than every span whose event
    /// arrived (that event was lost).
    pub(super) kernel_worst: Option<IrqSpanRecord>,
}

impl SpanStats {
    pub(super) fn new() -> Self {
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

    pub(super) fn add(&mut self, x: &IrqSpanRecord) {
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
