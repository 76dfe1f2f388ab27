//! The storm's guard rail: decides, from each capture line as it is recorded, whether the
//! storm must stop now — a timer-interrupt span past a share of `watchdog_thresh`, or a
//! period-timer callback longer than its own period (the kernel's "period too short" loop).
//! Pure: it sees lines and says stop; the caller lifts the quotas and kills the workers.
use std::collections::HashMap;
use std::ops::ControlFlow;

use serde::Serialize;

use crate::model::records::CaptureLine;

/// What makes the guard stop a storm.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct GuardLimits {
    /// `--guard PCT`: % of watchdog_thresh a timer-interrupt span may reach.
    pub pct: f64,
    /// watchdog_thresh the percentage is of, in seconds.
    pub thresh_s: u64,
}

impl GuardLimits {
    /// The longest span allowed: `pct` % of watchdog_thresh (at least 1 ns).
    pub fn span_limit_ns(&self) -> u64 {
        ((self.thresh_s as f64 * 1e9 * self.pct / 100.0) as u64).max(1)
    }
}

/// Why the guard stopped the storm (`stopped` in the storm's JSON, with the step).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Tripped {
    /// A timer interrupt that ran period timers held IRQs off past the limit.
    IrqSpan {
        cpu: u32,
        duration_ns: u64,
        /// Period-timer callbacks inside it.
        timers: u32,
        /// The cgroup whose callbacks took most of it (None: only the kernel's per-CPU totals
        /// saw it, its events were lost).
        cgroup_id: Option<u64>,
        cgroup: Option<String>,
        limit_ns: u64,
    },
    /// A callback ran longer than its cgroup's period.
    CallbackOverPeriod {
        cpu: u32,
        duration_ns: u64,
        period_ns: u64,
        cgroup_id: u64,
        cgroup: Option<String>,
    },
}

/// Spans whose callbacks are remembered until the span's own line comes; spans whose line is
/// lost would otherwise pile up.
const MAX_OPEN_SPANS: usize = 4096;

pub struct Guard {
    limit_ns: u64,
    /// Cgroup id -> path, for naming a stop (the storm's own; others by their cgroup lines).
    names: HashMap<u64, String>,
    /// (cpu, span start) -> its callbacks' (cgroup id, time) seen so far.
    open: HashMap<(u32, u64), Vec<(u64, u64)>>,
    tripped: Option<Tripped>,
}

impl Guard {
    pub fn new(limits: GuardLimits, names: HashMap<u64, String>) -> Guard {
        Guard {
            limit_ns: limits.span_limit_ns(),
            names,
            open: HashMap::new(),
            tripped: None,
        }
    }

    /// Why it stopped, once it has.
    pub fn tripped(&self) -> Option<&Tripped> {
        self.tripped.as_ref()
    }

    /// Look at one line; `Break` once the storm must stop (and on every line after).
    pub fn feed(&mut self, line: &CaptureLine) -> ControlFlow<()> {
        if self.tripped.is_some() {
            return ControlFlow::Break(());
        }
        self.tripped = match line {
            CaptureLine::Cgroup(c) => {
                if let Some(path) = &c.facts.path {
                    self.names.entry(c.facts.id).or_insert_with(|| path.clone());
                }
                None
            }
            CaptureLine::Period(p) => {
                if p.span_ts_ns != 0 {
                    if self.open.len() >= MAX_OPEN_SPANS {
                        self.open.clear();
                    }
                    self.open
                        .entry((p.cpu, p.span_ts_ns))
                        .or_default()
                        .push((p.cgroup_id, p.duration_ns));
                }
                (p.period_ns > 0 && p.duration_ns > p.period_ns).then(|| {
                    Tripped::CallbackOverPeriod {
                        cpu: p.cpu,
                        duration_ns: p.duration_ns,
                        period_ns: p.period_ns,
                        cgroup_id: p.cgroup_id,
                        cgroup: self.names.get(&p.cgroup_id).cloned(),
                    }
                })
            }
            CaptureLine::IrqSpan(s) => {
                let callbacks = self.open.remove(&(s.cpu, s.ts_ns)).unwrap_or_default();
                (s.duration_ns > self.limit_ns).then(|| {
                    // The cgroup that took most of the span (its callbacks summed).
                    let mut by_cgroup: HashMap<u64, u64> = HashMap::new();
                    for (id, ns) in callbacks {
                        *by_cgroup.entry(id).or_default() += ns;
                    }
                    let top = by_cgroup
                        .into_iter()
                        .max_by_key(|&(id, ns)| (ns, std::cmp::Reverse(id)))
                        .map(|(id, _)| id);
                    Tripped::IrqSpan {
                        cpu: s.cpu,
                        duration_ns: s.duration_ns,
                        timers: s.timers,
                        cgroup_id: top,
                        cgroup: top.and_then(|id| self.names.get(&id).cloned()),
                        limit_ns: self.limit_ns,
                    }
                })
            }
            // The kernel's own per-CPU worst span: it counts spans whose events were lost.
            CaptureLine::CpuTotals(t) => (t.worst_ns > self.limit_ns).then_some(Tripped::IrqSpan {
                cpu: t.cpu,
                duration_ns: t.worst_ns,
                timers: t.worst_timers,
                cgroup_id: None,
                cgroup: None,
                limit_ns: self.limit_ns,
            }),
            _ => None,
        };
        match self.tripped {
            Some(_) => ControlFlow::Break(()),
            None => ControlFlow::Continue(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::records::{CpuTotalsRecord, IrqSpanRecord, PeriodRecord};

    fn limits() -> GuardLimits {
        // 0.001 % of 10 s: 100 us.
        GuardLimits {
            pct: 0.001,
            thresh_s: 10,
        }
    }

    fn guard() -> Guard {
        Guard::new(
            limits(),
            HashMap::from([(7, "/s/cg0000".to_string()), (8, "/s/cg0001".to_string())]),
        )
    }

    fn period(cpu: u32, cgroup_id: u64, duration_ns: u64, span_ts_ns: u64) -> CaptureLine {
        CaptureLine::Period(PeriodRecord {
            ts_ns: span_ts_ns + 1,
            cpu,
            duration_ns,
            cgroup_id,
            timer_id: 0,
            loops: 1,
            unthrottled: 0,
            enqueued: 0,
            runnable: 0,
            period_ns: 5_000_000,
            quota_ns: 1_000_000,
            flags: 0,
            span_ts_ns,
            spread: 0,
            spread_overflow: 0,
            queued: 0,
            spread_cpus: Default::default(),
        })
    }

    fn span(cpu: u32, ts_ns: u64, duration_ns: u64, timers: u32) -> CaptureLine {
        CaptureLine::IrqSpan(IrqSpanRecord {
            ts_ns,
            cpu,
            duration_ns,
            timers,
            timers_ns: 0,
            flags: 0,
        })
    }

    #[test]
    fn limit_is_a_share_of_watchdog_thresh() {
        assert_eq!(limits().span_limit_ns(), 100_000);
        let ten = GuardLimits {
            pct: 10.0,
            thresh_s: 10,
        };
        assert_eq!(ten.span_limit_ns(), 1_000_000_000);
    }

    #[test]
    fn spans_under_the_limit_pass() {
        let mut g = guard();
        assert!(g.feed(&period(1, 7, 40_000, 1_000)).is_continue());
        assert!(
            g.feed(&span(1, 1_000, 100_000, 1)).is_continue(),
            "at the limit"
        );
        assert!(g.tripped().is_none());
    }

    #[test]
    fn a_long_span_names_the_cgroup_that_took_most_of_it() {
        let mut g = guard();
        // Another CPU's span with the same start must not mix in.
        assert!(g.feed(&period(0, 8, 90_000, 5_000)).is_continue());
        for _ in 0..3 {
            assert!(g.feed(&period(2, 8, 20_000, 5_000)).is_continue());
        }
        assert!(g.feed(&period(2, 7, 50_000, 5_000)).is_continue());
        assert!(g.feed(&span(2, 5_000, 120_000, 4)).is_break());
        assert_eq!(
            g.tripped(),
            Some(&Tripped::IrqSpan {
                cpu: 2,
                duration_ns: 120_000,
                timers: 4,
                cgroup_id: Some(8),
                cgroup: Some("/s/cg0001".into()),
                limit_ns: 100_000,
            })
        );
        // Once tripped, it stays so.
        assert!(g.feed(&period(0, 7, 1, 0)).is_break());
    }

    #[test]
    fn a_callback_longer_than_its_period_stops_it() {
        let mut g = guard();
        assert!(g.feed(&period(3, 7, 5_000_000, 0)).is_continue(), "equal");
        assert!(g.feed(&period(3, 9, 5_000_001, 0)).is_break());
        let json = serde_json::to_value(g.tripped().unwrap()).unwrap();
        assert_eq!(json["kind"], "callback_over_period");
        assert_eq!(json["cgroup_id"], 9);
        assert!(json["cgroup"].is_null(), "never named");
    }

    #[test]
    fn the_kernels_totals_count_spans_whose_events_were_lost() {
        let mut g = guard();
        let totals = |worst_ns| {
            CaptureLine::CpuTotals(CpuTotalsRecord {
                ts_ns: 0,
                cpu: 1,
                interrupts: 10,
                interrupts_ns: 0,
                interrupt_max_ns: worst_ns,
                spans: 1,
                spans_ns: worst_ns,
                timers: 3,
                worst_ns,
                worst_ts_ns: 0,
                worst_timers: 3,
                worst_timers_ns: 0,
                max_timers: 3,
                interrupt_hist: Vec::new(),
            })
        };
        assert!(g.feed(&totals(99_000)).is_continue());
        assert!(g.feed(&totals(150_000)).is_break());
        let json = serde_json::to_value(g.tripped().unwrap()).unwrap();
        assert_eq!(json["kind"], "irq_span");
        assert_eq!(json["duration_ns"], 150_000);
        assert!(json["cgroup"].is_null());
    }
}
