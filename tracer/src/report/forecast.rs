//! The lockup forecast: what one more unit of work costs with IRQs off, and how much work in
//! one callback, one CSD or one timer interrupt would make the node's worst span reach the
//! shortest period in use, and watchdog_thresh. Built from the aggregator's running fits
//! ([`crate::analysis::forecast`]); every figure the kernel cannot give says why instead.
use serde::{Deserialize, Serialize};

use crate::analysis::forecast::{
    ForecastMoments, Moments, NoFit, SecondWork, line, plane, units_to_reach,
};

use super::model::{CgroupReport, Figures, Report, WorstIrqsOff};

/// A fit, or why there is none.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(tag = "status", rename_all = "snake_case")]
pub enum Fit<T> {
    Fitted(T),
    Unavailable { why: String },
}

impl<T> Fit<T> {
    pub fn fitted(&self) -> Option<&T> {
        match self {
            Fit::Fitted(t) => Some(t),
            Fit::Unavailable { .. } => None,
        }
    }

    fn why(why: impl Into<String>) -> Self {
        Fit::Unavailable { why: why.into() }
    }
}

/// How much work reaches a target.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
pub struct Reach {
    pub target_ns: u64,
    /// The work (unthrottles, or period timers) in one callback, CSD or interrupt at which
    /// the fitted time reaches `target_ns`.
    pub count: u64,
    /// The most work seen in one already reaches it.
    pub reached: bool,
}

/// IRQs-off time against the cfs_rqs unthrottled (and the entities enqueued or tasks queued
/// with them) in one period-timer callback or one async-unthrottle CSD.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct WorkFit {
    pub n: u64,
    pub r2: f64,
    pub fixed_ns: f64,
    pub ns_per_unthrottle: f64,
    /// The second work fitted, where it varied apart from the unthrottles.
    pub second: Option<SecondWork>,
    pub ns_per_second: Option<f64>,
    /// The second work per unthrottle, on average.
    pub second_per_unthrottle: f64,
    /// One more unthrottle with its usual share of the second work.
    pub ns_per_unthrottle_all_in: f64,
    /// The most unthrottles seen in one callback (CSD).
    pub max_unthrottles: u64,
    pub reach_period: Option<Reach>,
    pub reach_watchdog: Option<Reach>,
}

/// Whole timer-interrupt time against the period timers it ran.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct TimerFit {
    pub n: u64,
    pub r2: f64,
    pub fixed_ns: f64,
    pub ns_per_timer: f64,
    /// The most period timers seen in one interrupt.
    pub max_timers: u64,
    pub reach_period: Option<Reach>,
    pub reach_watchdog: Option<Reach>,
}

impl TimerFit {
    /// The span `timers` period timers in one interrupt would take.
    pub fn predict_ns(&self, timers: f64) -> f64 {
        self.fixed_ns + self.ns_per_timer * timers
    }
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct Forecast {
    /// The shortest period of the traced cgroups (the kernel's, after any rescaling).
    pub shortest_period_ns: Option<u64>,
    pub watchdog_ns: Option<u64>,
    /// The part of the node's worst span that was not period timers: what a bigger callback
    /// would add to.
    pub worst_span_rest_ns: Option<u64>,
    pub callback: Fit<WorkFit>,
    pub csd: Fit<WorkFit>,
    pub span: Fit<TimerFit>,
    /// The fits' running moments, fitted or not: two runs' pool exactly by merging.
    pub moments: FitMoments,
}

/// Count, means and co-moments of each fit's points.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
pub struct FitMoments {
    /// (unthrottled, enqueued or queued, callback ns).
    pub callback: Moments<3>,
    /// (unthrottled, enqueued, CSD segment ns).
    pub csd: Moments<3>,
    /// (period timers, interrupt ns).
    pub span: Moments<2>,
}

/// Targets a forecast aims at.
struct Targets {
    period_ns: Option<u64>,
    watchdog_ns: Option<u64>,
}

impl Targets {
    fn reach(
        &self,
        rest_ns: f64,
        fixed_ns: f64,
        per_unit_ns: f64,
        seen: u64,
    ) -> [Option<Reach>; 2] {
        [self.period_ns, self.watchdog_ns].map(|t| {
            t.map(|target_ns| {
                let count = units_to_reach(target_ns as f64, rest_ns, fixed_ns, per_unit_ns);
                Reach {
                    target_ns,
                    count,
                    reached: count <= seen,
                }
            })
        })
    }
}

/// The forecast of a report from the fits in `m`: the report's own (its aggregator's), or
/// those of a whole `watch` run, aimed at the report's shortest period and worst span.
pub fn forecast_of(report: &Report, m: &ForecastMoments) -> Forecast {
    forecast(
        m,
        &report.figures,
        &report.cgroups,
        report.watchdog.thresh_s,
        report.worst_irqs_off.as_ref(),
    )
}

pub(super) fn forecast(
    m: &ForecastMoments,
    figs: &Figures,
    cgroups: &[CgroupReport],
    thresh_s: Option<u64>,
    worst: Option<&WorstIrqsOff>,
) -> Forecast {
    let targets = Targets {
        period_ns: cgroups
            .iter()
            .filter_map(|c| c.kernel_period_us)
            .filter(|&p| p > 0)
            .min()
            .map(|us| us * 1000),
        watchdog_ns: thresh_s.map(|s| s * 1_000_000_000),
    };
    let rest = worst.and_then(|w| w.period_timers_ns.map(|t| w.duration_ns.saturating_sub(t)));
    Forecast {
        shortest_period_ns: targets.period_ns,
        watchdog_ns: targets.watchdog_ns,
        worst_span_rest_ns: rest,
        callback: callback_fit(m, figs, &targets, rest.unwrap_or(0)),
        csd: csd_fit(m, figs, &targets),
        span: span_fit(m, figs, &targets),
        moments: FitMoments {
            callback: m.callback,
            csd: m.csd,
            span: m.span,
        },
    }
}

fn work_fit(
    moments: &Moments<3>,
    second: Option<SecondWork>,
    targets: &Targets,
    rest_ns: u64,
    max_unthrottles: u64,
) -> Result<WorkFit, NoFit> {
    let p = plane(moments, "unthrottles")?;
    let all_in = p.per_unit_ns();
    let [reach_period, reach_watchdog] =
        targets.reach(rest_ns as f64, p.line.fixed_ns, all_in, max_unthrottles);
    Ok(WorkFit {
        n: p.line.n,
        r2: p.line.r2,
        fixed_ns: p.line.fixed_ns,
        ns_per_unthrottle: p.line.per_unit_ns,
        second: p.per_second_ns.and(second),
        ns_per_second: p.per_second_ns,
        second_per_unthrottle: p.second_per_first,
        ns_per_unthrottle_all_in: all_in,
        max_unthrottles,
        reach_period,
        reach_watchdog,
    })
}

fn callback_fit(
    m: &ForecastMoments,
    figs: &Figures,
    targets: &Targets,
    rest_ns: u64,
) -> Fit<WorkFit> {
    if m.callback.n == 0 {
        return Fit::why(if m.callback_uncounted > 0 {
            // The probes' own lines say why in full; said once there, not again here.
            let what = if figs.unthrottled.available {
                "the unthrottle probe counted none of them"
            } else {
                "unthrottle_cfs_rq is not probed (the probes say why)"
            };
            format!("the kernel could not count the work in a callback: {what}")
        } else {
            "no period-timer callbacks".to_string()
        });
    }
    match work_fit(
        &m.callback,
        m.callback_second,
        targets,
        rest_ns,
        u64::from(m.callback_max_unthrottled),
    ) {
        Ok(f) => Fit::Fitted(f),
        Err(e) => Fit::why(format!("callback time against unthrottles: {e}")),
    }
}

fn csd_fit(m: &ForecastMoments, figs: &Figures, targets: &Targets) -> Fit<WorkFit> {
    if m.csd.n == 0 {
        return Fit::why(if m.csd_shared > 0 {
            "each CSD's time covers all its cfs_rqs here (listed mode): no per-unthrottle time to fit"
                .to_string()
        } else if figs.async_unthrottle.available {
            "no async unthrottle did any work".to_string()
        } else {
            "no async unthrottle traced (the probes say why)".to_string()
        });
    }
    let second = (m.csd.comoment[1][1] > 0.0).then_some(SecondWork::Enqueued);
    match work_fit(&m.csd, second, targets, 0, u64::from(m.csd_max_unthrottled)) {
        Ok(f) => Fit::Fitted(f),
        Err(e) => Fit::why(format!("CSD time against unthrottles: {e}")),
    }
}

fn span_fit(m: &ForecastMoments, figs: &Figures, targets: &Targets) -> Fit<TimerFit> {
    if m.span.n == 0 {
        return Fit::why(if figs.irq_span.available {
            "no timer interrupt ran a period timer".to_string()
        } else {
            "timer interrupts are not traced (the probes say why)".to_string()
        });
    }
    match line(&m.span, "period timers in one interrupt") {
        Ok(l) => {
            let max_timers = u64::from(m.span_max_timers);
            let [reach_period, reach_watchdog] =
                targets.reach(0.0, l.fixed_ns, l.per_unit_ns, max_timers);
            Fit::Fitted(TimerFit {
                n: l.n,
                r2: l.r2,
                fixed_ns: l.fixed_ns,
                ns_per_timer: l.per_unit_ns,
                max_timers,
                reach_period,
                reach_watchdog,
            })
        }
        Err(e) => Fit::why(format!("interrupt time against period timers: {e}")),
    }
}

/// Pool the span fits of earlier runs (storm steps) and predict the span `timers` period
/// timers in one interrupt take: how a ramp checks the forecast against its next step.
pub fn predict_span(earlier: &[&Moments<2>], timers: f64) -> Result<f64, NoFit> {
    let mut pooled = Moments::<2>::default();
    for m in earlier {
        pooled.merge(m);
    }
    let l = line(&pooled, "period timers in one interrupt")?;
    Ok(l.fixed_ns + l.per_unit_ns * timers)
}

/// A ramp step's mean interrupt span against what the earlier steps' pooled fit predicted
/// for its mean period timers per interrupt.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq)]
pub struct StepPrediction {
    /// The step's mean period timers in one interrupt.
    pub timers: f64,
    pub predicted_ns: f64,
    pub measured_ns: f64,
    /// |predicted - measured| / measured, in %.
    pub error_pct: f64,
}

pub fn predict_step(earlier: &[&Moments<2>], step: &Moments<2>) -> Result<StepPrediction, NoFit> {
    if step.n == 0 {
        return Err(NoFit::TooFew { n: 0 });
    }
    let (timers, measured_ns) = (step.mean[0], step.mean[1]);
    let predicted_ns = predict_span(earlier, timers)?;
    Ok(StepPrediction {
        timers,
        predicted_ns,
        measured_ns,
        error_pct: 100.0 * (predicted_ns - measured_ns).abs() / measured_ns.max(1.0),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::analysis::Aggregator;
    use crate::model::records::IrqSpanRecord;
    use crate::report::build_report;
    use crate::report::fixtures::{header, irq_header, rec};

    /// Callbacks costing 20 us + 5 us per unthrottle, and interrupts costing 10 us + 30 us
    /// per period timer: the fits give back those costs, and the counts that reach the
    /// targets follow from them.
    #[test]
    fn the_forecast_gives_back_the_costs_and_what_reaches_the_targets() {
        let mut a = Aggregator::new();
        for i in 0..40u32 {
            let u = 1 + i % 8;
            a.add_period(&rec(
                20,
                0,
                1_000_000 * u64::from(i + 1),
                20_000 + 5_000 * u64::from(u),
                u,
            ));
            let timers = 1 + i % 5;
            a.add_irq_span(&IrqSpanRecord {
                ts_ns: 1_000_000 * u64::from(i + 1),
                cpu: 1,
                duration_ns: 10_000 + 30_000 * u64::from(timers),
                timers,
                timers_ns: 30_000 * u64::from(timers),
                flags: tracer_ebpf::HOW_FRAME_TRACEPOINT,
            });
        }
        let r = build_report(&irq_header(), &a, 1_000_000_000, vec![]);
        let f = r.forecast.as_ref().unwrap();
        assert_eq!(f.shortest_period_ns, Some(100_000_000));
        assert_eq!(f.watchdog_ns, Some(10_000_000_000));
        let cb = f.callback.fitted().expect("callback fitted");
        assert!(
            (cb.fixed_ns - 20_000.0).abs() < 1e-3 && (cb.ns_per_unthrottle - 5_000.0).abs() < 1e-6
        );
        assert!((cb.r2 - 1.0).abs() < 1e-9 && cb.n == 40 && cb.max_unthrottles == 8);
        // The node's worst span (10 us + 5 timers) left 10 us that was not period timers:
        // (100 ms - 10 us - 20 us) / 5 us = 19994.
        assert_eq!(f.worst_span_rest_ns, Some(10_000));
        assert_eq!(
            cb.reach_period.map(|r| (r.count, r.reached)),
            Some((19_994, false))
        );
        let sp = f.span.fitted().expect("span fitted");
        assert!((sp.ns_per_timer - 30_000.0).abs() < 1e-6 && (sp.fixed_ns - 10_000.0).abs() < 1e-3);
        assert_eq!(sp.max_timers, 5);
        // (10 s - 10 us) / 30 us = 333333.
        assert_eq!(sp.reach_watchdog.map(|r| r.count), Some(333_333));
        assert!((sp.predict_ns(7.0) - 220_000.0).abs() < 1e-3);
        // The fit pooled with nothing predicts like itself.
        let none = Moments::default();
        let p = predict_span(&[&f.moments.span, &none], 7.0).unwrap();
        assert!((p - 220_000.0).abs() < 1e-3, "{p}");
        assert!(matches!(f.csd, Fit::Unavailable { .. }));
        let json = serde_json::to_value(f).unwrap();
        assert_eq!(json["callback"]["status"], "fitted");
        assert_eq!(json["csd"]["status"], "unavailable");
        assert_eq!(serde_json::from_value::<Forecast>(json).unwrap(), *f);
    }

    #[test]
    fn a_step_is_predicted_from_the_earlier_steps_pooled() {
        // Steps of 2, 4 and 6 timers an interrupt, spans 50 us + 40 us a timer (+-1 us).
        let step = |t: f64| {
            let mut m = Moments::<2>::default();
            for i in 0..10 {
                let jitter = if i % 2 == 0 { 1_000.0 } else { -1_000.0 };
                m.add([
                    t + f64::from(i % 2),
                    50_000.0 + 40_000.0 * (t + f64::from(i % 2)) + jitter,
                ]);
            }
            m
        };
        let (s1, s2, s3) = (step(2.0), step(4.0), step(6.0));
        let p = predict_step(&[&s1, &s2], &s3).unwrap();
        assert!((p.timers - 6.5).abs() < 1e-9);
        assert!((p.predicted_ns - 310_000.0).abs() < 2_000.0, "{p:?}");
        assert!(p.error_pct < 1.0, "{p:?}");
        assert!(predict_step(&[], &s3).is_err());
    }

    #[test]
    fn without_counted_work_the_forecast_says_why() {
        let mut a = Aggregator::new();
        for i in 0..20u64 {
            let mut p = rec(20, 0, 1_000_000 * (i + 1), 20_000, 0);
            p.flags &= !tracer_ebpf::HOW_UNTHROTTLE;
            a.add_period(&p);
        }
        let r = build_report(&header(), &a, 1_000_000_000, vec![]);
        let f = r.forecast.unwrap();
        let Fit::Unavailable { why } = &f.callback else {
            panic!("{:?}", f.callback)
        };
        assert!(
            why.starts_with("the kernel could not count the work in a callback"),
            "{why}"
        );
        assert!(
            matches!(&f.span, Fit::Unavailable { why } if why.contains("not traced")),
            "{:?}",
            f.span
        );
    }
}
