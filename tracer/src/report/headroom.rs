//! Headroom: what is left of the hard-lockup watchdog's threshold after the worst IRQs-off
//! span, per CPU and for the node, and whether it is low enough to highlight.
use super::DEFAULT_HIGHLIGHT_PCT;
use super::model::{
    BASIS_CALLBACK, BASIS_CSD, BASIS_SPAN, CpuReport, Gate, GateVerdict, HeadroomAlert, Report,
    Stats, WorstIrqsOff,
};
use super::prose::{basis_phrase, decimals_against, human_ns};
use crate::analysis::Aggregator;
use crate::analysis::cpu::CpuStats;
use crate::analysis::headroom::{Verdict, judge};

/// watchdog_thresh - `worst_ns`; None when the threshold is unknown.
pub(crate) fn headroom(thresh_s: Option<u64>, worst_ns: u64) -> Option<i64> {
    let t = i64::try_from(thresh_s?).ok()?.saturating_mul(1_000_000_000);
    Some(t.saturating_sub(i64::try_from(worst_ns).unwrap_or(i64::MAX)))
}

/// The worst of (basis, cpu, ns, span) candidates; on a tie the earlier basis wins
/// ([`HeadroomBasis`] order).
pub(crate) fn worst_of(cands: impl IntoIterator<Item = WorstIrqsOff>) -> Option<WorstIrqsOff> {
    cands
        .into_iter()
        .filter(|w| w.duration_ns > 0)
        .min_by_key(|w| (std::cmp::Reverse(w.duration_ns), w.basis, w.cpu))
}

/// One CPU's IRQs-off candidates: its worst span, callback and CSD.
pub(crate) fn cpu_candidates(agg: &Aggregator, cpu: u32, s: &CpuStats) -> Vec<WorstIrqsOff> {
    let plain = |basis, duration_ns| WorstIrqsOff {
        basis,
        cpu,
        duration_ns,
        period_timers: None,
        period_timers_ns: None,
    };
    let mut v = Vec::with_capacity(3);
    if let Some(sp) = agg.cpu_spans(cpu) {
        let w = sp.worst();
        v.push(WorstIrqsOff {
            period_timers: Some(w.timers),
            period_timers_ns: Some(w.timers_ns),
            ..plain(BASIS_SPAN, w.duration_ns)
        });
    }
    v.push(plain(BASIS_CALLBACK, s.max_callback_ns));
    v.push(plain(BASIS_CSD, s.max_async_ns));
    v
}

/// Every CPU that ran a period timer or a CSD: its IRQs-off time and its headroom.
pub(crate) fn cpu_reports(agg: &Aggregator, thresh_s: Option<u64>) -> Vec<CpuReport> {
    agg.cpus()
        .map(|(cpu, s)| {
            let spans = agg.cpu_spans(cpu);
            let worst = worst_of(cpu_candidates(agg, cpu, s));
            CpuReport {
                cpu,
                period_timers: s.period_timers,
                timer_irq_ns: s.callback_ns,
                max_callback_ns: s.max_callback_ns,
                max_chain_ns: s.max_chain_ns,
                async_csds: s.async_csds,
                async_ns: s.async_ns,
                max_async_ns: s.max_async_ns,
                irq_spans: spans.map_or(0, |x| x.span_ns().count()),
                irq_span_ns: spans.map(|x| Stats::of(x.span_ns())),
                max_irq_span_ns: spans.map(|x| x.span_ns().max()),
                worst_irq_span: spans.map(|x| *x.worst()),
                period_timers_per_span: spans.map(|x| Stats::of(x.timers_per_span())),
                period_timer_share: spans.map(|x| x.timer_share()),
                headroom_ns: worst
                    .as_ref()
                    .and_then(|w| headroom(thresh_s, w.duration_ns)),
                headroom_basis: worst.map(|w| w.basis),
            }
        })
        .collect()
}

/// Judge the report's node headroom against `under_pct` % of watchdog_thresh, with the same
/// figure `--fail-under` uses ([`crate::analysis::headroom::headroom_pct`]).
pub fn headroom_alert(report: &Report, under_pct: f64) -> HeadroomAlert {
    match crate::analysis::headroom::headroom_pct(report.watchdog.thresh_s, report.headroom_ns) {
        Ok(pct) => HeadroomAlert {
            under_pct,
            headroom_pct: Some(json_pct(pct, under_pct)),
            alert: pct < under_pct,
            reason: None,
        },
        Err(why) => HeadroomAlert {
            under_pct,
            headroom_pct: None,
            alert: false,
            reason: Some(why),
        },
    }
}

/// A headroom percentage for the JSON: 6 decimals, more where 6 would put it on the other
/// side of `threshold` (or of 100 %) than the exact value the verdict compared.
fn json_pct(pct: f64, threshold: f64) -> f64 {
    decimals_against(pct, 6, &[threshold, 100.0])
        .parse()
        .unwrap_or(pct)
}

/// `--fail-under PCT`: judge the report's node headroom (the figure `headroom_alert` shows)
/// and say so; [`Gate::verdict`] is what the exit status follows.
pub fn gate(report: &Report, fail_under_pct: f64) -> Gate {
    let (verdict, headroom_pct, why) =
        match judge(report.watchdog.thresh_s, report.headroom_ns, fail_under_pct) {
            Verdict::Pass { headroom_pct } => (GateVerdict::Pass, Some(headroom_pct), None),
            Verdict::Fail { headroom_pct } => (GateVerdict::Fail, Some(headroom_pct), None),
            Verdict::Unknown { why } => (GateVerdict::NotJudged, None, Some(why)),
        };
    let why = match (headroom_pct, why) {
        (Some(pct), _) => {
            let worst = report
                .worst_irqs_off
                .as_ref()
                .map_or_else(String::new, |w| {
                    format!(
                        "; worst IRQs-off {} on cpu{}, {}",
                        human_ns(w.duration_ns),
                        w.cpu,
                        basis_phrase(w.basis)
                    )
                });
            format!(
                "headroom {}% of watchdog_thresh ({} s{worst}) is {} {fail_under_pct}%",
                decimals_against(pct, 4, &[fail_under_pct, 100.0]),
                report.watchdog.thresh_s.unwrap_or(0),
                if verdict == GateVerdict::Fail {
                    "below"
                } else {
                    "at or above"
                },
            )
        }
        (None, why) => format!(
            "{}; a gate that cannot judge does not pass",
            why.unwrap_or_default()
        ),
    };
    Gate {
        fail_under_pct,
        headroom_pct: headroom_pct.map(|p| json_pct(p, fail_under_pct)),
        verdict,
        why,
    }
}

impl Report {
    /// Judge `--fail-under PCT` and record it in the report's `gate`.
    pub fn set_gate(&mut self, fail_under_pct: f64) {
        self.gate = Some(gate(self, fail_under_pct));
    }

    /// Highlight headroom under `under_pct` % of watchdog_thresh (`--highlight-under`): sets
    /// `headroom_alert`, which the text rendering follows too.
    pub fn set_highlight_under(&mut self, under_pct: f64) {
        self.headroom_alert = Some(headroom_alert(self, under_pct));
    }

    /// Headroom `h` (the node's or a cgroup's) below the highlight threshold: the same exact
    /// percentage and comparison as `headroom_alert` and `--fail-under`.
    pub fn below_highlight(&self, h: Option<i64>) -> bool {
        crate::analysis::headroom::headroom_pct(self.watchdog.thresh_s, h)
            .is_ok_and(|p| p < self.highlight_under())
    }

    /// A headroom percentage to `digits` decimals, more near the highlight threshold or 100 %.
    pub fn headroom_pct_text(&self, pct: f64, digits: usize) -> String {
        decimals_against(pct, digits, &[self.highlight_under(), 100.0])
    }

    /// The highlight threshold in effect (% of watchdog_thresh).
    pub fn highlight_under(&self) -> f64 {
        self.headroom_alert
            .as_ref()
            .map_or(DEFAULT_HIGHLIGHT_PCT, |a| a.under_pct)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::report::build_report;
    use crate::report::fixtures::*;

    #[test]
    fn highlight_threshold() {
        // Node headroom 10 s - the 400 us worst callback: 99.996 %.
        let mut r = build_report(&header(), &agg(), 8_000_000_000, vec![]);
        let a = r.headroom_alert.clone().expect("always judged");
        assert_eq!(a.under_pct, DEFAULT_HIGHLIGHT_PCT);
        assert_eq!(a.headroom_pct, Some(99.996));
        assert!(!a.alert);
        assert_eq!(a.reason, None);
        // Headroom is always below 100 % of the threshold.
        r.set_highlight_under(100.0);
        let a = r.headroom_alert.clone().unwrap();
        assert!(a.alert);
        assert_eq!(a.under_pct, 100.0);
        assert_eq!(
            a.headroom_pct.unwrap(),
            crate::analysis::headroom::headroom_pct(r.watchdog.thresh_s, r.headroom_ns).unwrap()
        );
        let v = serde_json::to_value(&r).unwrap();
        assert_eq!(v["headroom_alert"]["alert"], true);
        assert_eq!(v["headroom_alert"]["under_pct"], 100.0);
        assert_eq!(v["headroom_alert"]["headroom_pct"], 99.996);
        // 0 %: never (headroom is never negative percent here).
        r.set_highlight_under(0.0);
        assert!(!r.headroom_alert.as_ref().unwrap().alert);
        // Consistent with --fail-under at the same percentage.
        for pct in [0.0, 50.0, 99.99, 99.996, 99.997, 100.0] {
            r.set_highlight_under(pct);
            let alert = r.headroom_alert.as_ref().unwrap().alert;
            let fails = matches!(
                crate::analysis::headroom::judge(r.watchdog.thresh_s, r.headroom_ns, pct),
                crate::analysis::headroom::Verdict::Fail { .. }
            );
            assert_eq!(alert, fails, "{pct}");
        }
        // Unknown threshold: no alert, and why.
        let mut h = header();
        h.host.watchdog.thresh_s = None;
        let r = build_report(&h, &agg(), 8_000_000_000, vec![]);
        let a = r.headroom_alert.unwrap();
        assert_eq!((a.alert, a.headroom_pct), (false, None));
        assert!(a.reason.unwrap().contains("watchdog_thresh"));
        // No callbacks: the same.
        let r = build_report(&header(), &Aggregator::new(), 1, vec![]);
        let a = r.headroom_alert.unwrap();
        assert_eq!((a.alert, a.headroom_pct), (false, None));
    }

    #[test]
    fn the_gate_says_what_it_judged() {
        // Node headroom 10 s - the 400 us worst callback: 99.996 %.
        let mut r = build_report(&header(), &agg(), 8_000_000_000, vec![]);
        assert!(
            serde_json::to_value(&r).unwrap().get("gate").is_none(),
            "no gate asked for, no `gate` key: older reports stay byte-identical"
        );
        r.set_gate(50.0);
        let g = r.gate.clone().unwrap();
        assert_eq!(g.verdict, GateVerdict::Pass);
        assert_eq!(
            (g.fail_under_pct, g.headroom_pct, r.headroom_basis),
            (50.0, Some(99.996), Some(BASIS_CALLBACK))
        );
        assert_eq!(
            g.why,
            "headroom 99.9960% of watchdog_thresh (10 s; worst IRQs-off 400 us on cpu2, a \
             period-timer callback) is at or above 50%"
        );
        // The run: `--fail-under 99.9999` failed, and the JSON must say so.
        r.set_gate(99.9999);
        let v = serde_json::to_value(&r).unwrap();
        assert_eq!(v["gate"]["verdict"], "fail");
        assert_eq!(v["gate"]["fail_under_pct"], 99.9999);
        assert_eq!(v["gate"]["headroom_pct"], 99.996);
        assert_eq!(v["headroom_basis"], "period_callback");
        assert!(
            v["gate"]["why"]
                .as_str()
                .unwrap()
                .contains("is below 99.9999%")
        );
        // A headroom a hair under the threshold is written under it, in the number and the
        // sentence (6 or 4 decimals would both say 100).
        r.headroom_ns = Some(9_999_999_996);
        r.set_gate(100.0);
        r.set_highlight_under(100.0);
        let g = r.gate.clone().unwrap();
        assert_eq!(g.verdict, GateVerdict::Fail);
        assert_eq!(g.headroom_pct, Some(99.99999996));
        assert!(g.why.contains("headroom 99.99999996% "), "{}", g.why);
        let a = r.headroom_alert.clone().unwrap();
        assert_eq!((a.alert, a.headroom_pct), (true, Some(99.99999996)));
        // Nothing to judge: its own verdict, never a pass.
        let mut r = build_report(&header(), &Aggregator::new(), 1, vec![]);
        r.set_gate(50.0);
        let g = r.gate.clone().unwrap();
        assert_eq!((g.verdict, g.headroom_pct), (GateVerdict::NotJudged, None));
        assert!(g.why.contains("no period-timer callback"), "{}", g.why);
        let v = serde_json::to_value(&r).unwrap();
        assert_eq!(v["gate"]["verdict"], "not_judged");
        let back: Report = serde_json::from_value(v).unwrap();
        assert_eq!(back.gate, r.gate);
    }

    #[test]
    fn irq_spans_set_the_headroom() {
        let r = build_report(&irq_header(), &span_agg(), 8_000_000_000, vec![]);
        assert_eq!(r.headroom_ns, Some(10_000_000_000 - 500_000));
        assert_eq!(r.headroom_basis, Some(BASIS_SPAN));
        let w = r.worst_irqs_off.clone().unwrap();
        assert_eq!(
            (w.cpu, w.duration_ns, w.period_timers, w.period_timers_ns),
            (3, 500_000, Some(2), Some(312_000))
        );
        assert!(r.figures.irq_span.available);
        assert_eq!(r.events.irq_spans, 1);
        assert_eq!(r.events.periods_in_span, 2);
        let cpu3 = r.cpus.iter().find(|c| c.cpu == 3).unwrap();
        assert_eq!(cpu3.max_irq_span_ns, Some(500_000));
        assert_eq!(
            cpu3.worst_irq_span.map(|w| (w.ts_ns, w.timers)),
            Some((20_000_000_000, 2))
        );
        assert_eq!(cpu3.irq_span_ns.unwrap().count, 1);
        assert_eq!(cpu3.period_timers_per_span.unwrap().max, 2);
        assert!((cpu3.period_timer_share.unwrap() - 0.624).abs() < 1e-9);
        assert_eq!(cpu3.headroom_ns, Some(10_000_000_000 - 500_000));
        assert_eq!(cpu3.headroom_basis, Some(BASIS_SPAN));
        // A CPU without spans: its worst callback.
        let cpu2 = r.cpus.iter().find(|c| c.cpu == 2).unwrap();
        assert_eq!(cpu2.irq_span_ns, None);
        assert_eq!(cpu2.headroom_basis, Some(BASIS_CALLBACK));
        assert_eq!(cpu2.headroom_ns, Some(10_000_000_000 - 400_000));
        let c = r.culprit.as_ref().unwrap();
        assert_eq!(c.cgroup.id, 20);
        assert_eq!(c.cgroup.headroom_ns, Some(10_000_000_000 - 500_000));
        assert_eq!(c.cgroup.headroom_basis, Some(BASIS_SPAN));
        let ws = c.cgroup.worst_irq_span.unwrap();
        assert_eq!(
            (ws.own_ns, ws.own_timers, ws.period_timers),
            (310_000, 1, 2)
        );
        assert!(
            c.reason.contains(
                "its timers took 310 us of the node's worst timer-interrupt span, 500 us on \
                 cpu3 (2 period timers in it); 102 period-timer callbacks"
            ),
            "{}",
            c.reason
        );
        assert!(
            c.reason.ends_with("; watchdog headroom 9.9995 s of 10 s"),
            "{}",
            c.reason
        );
        // cron's own headroom is the span it shared, not its 2 us callback.
        let cron = r.cgroups.iter().find(|c| c.id == 30).unwrap();
        assert_eq!(cron.headroom_ns, Some(10_000_000_000 - 500_000));
        let v = round_trip(&r);
        assert_eq!(v["headroom_basis"], "irq_span");
        assert_eq!(
            v["cpus"]
                .as_array()
                .unwrap()
                .iter()
                .filter(|c| c["irq_spans"] == 1)
                .count(),
            1
        );
    }

    #[test]
    fn headroom_basis_without_spans() {
        // No span probe in the capture: the worst callback (the unresolved one, cpu2).
        let r = build_report(&header(), &agg(), 1, vec![]);
        assert_eq!(r.headroom_basis, Some(BASIS_CALLBACK));
        assert_eq!(r.worst_irqs_off.as_ref().unwrap().cpu, 2);
        assert!(!r.figures.irq_span.available);
        let f = &r.figures.irq_span;
        assert!(reason(f).contains("older cfstrace"), "{f:?}");
        assert!(r.cgroups.iter().all(|c| c.worst_irq_span.is_none()));
        assert_eq!(r.cgroups[0].headroom_basis, Some(BASIS_CALLBACK));
        // A CSD longer than any callback: the node's headroom is the CSD's.
        let r = build_report(&async_header(), &long_csd_agg(), 1, vec![]);
        assert_eq!(r.headroom_basis, Some(BASIS_CSD));
        assert_eq!(r.headroom_ns, Some(10_000_000_000 - 450_000));
        // Attached, but no callback ran inside a traced interrupt.
        let r = build_report(&irq_header(), &agg(), 1, vec![]);
        assert!(r.figures.irq_span.available);
        let f = &r.figures.irq_span;
        assert!(reason(f).contains("low-resolution"), "{f:?}");
        // A report JSON from before spans still reads.
        let mut v = serde_json::to_value(&r).unwrap();
        for k in ["headroom_basis", "worst_irqs_off", "precursors"] {
            v.as_object_mut().unwrap().remove(k);
        }
        v["cpus"][0].as_object_mut().unwrap().remove("irq_span_ns");
        v["cgroups"][0].as_object_mut().unwrap().remove("spread");
        let back: Report = serde_json::from_value(v).unwrap();
        assert_eq!(back.headroom_basis, None);
    }
}
