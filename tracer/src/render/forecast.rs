//! The lockup forecast in words: one paragraph per fit, for the report table and `watch`.
use crate::analysis::forecast::SecondWork;
use crate::report::forecast::{Fit, Forecast, Reach, TimerFit, WorkFit};
use crate::report::human_ns;

/// A signed nanosecond figure (a fitted fixed cost can come out below zero).
fn signed_ns(ns: f64) -> String {
    let h = human_ns(ns.abs().round() as u64);
    if ns < 0.0 { format!("-{h}") } else { h }
}

fn reach_phrase(r: &Reach, unit: &str, target: &str) -> String {
    if r.reached {
        format!("{target} already reached by the most {unit} seen")
    } else {
        format!("{} would reach {target}", r.count)
    }
}

/// `the 5.00 ms period` and `watchdog_thresh (10 s)` as targets.
fn targets(f: &Forecast, period: &Option<Reach>, watchdog: &Option<Reach>, unit: &str) -> String {
    let mut parts = Vec::new();
    if let Some(r) = period {
        let t = format!("the shortest period ({})", human_ns(r.target_ns));
        parts.push(reach_phrase(r, unit, &t));
    }
    if let Some(r) = watchdog {
        let t = format!("watchdog_thresh ({})", human_ns(r.target_ns));
        parts.push(reach_phrase(r, unit, &t));
    }
    if parts.is_empty() {
        return match (f.shortest_period_ns, f.watchdog_ns) {
            (None, None) => "no period or watchdog_thresh known to aim at".into(),
            _ => String::new(),
        };
    }
    parts.join("; ")
}

fn work(f: &Forecast, w: &WorkFit, at: &str) -> String {
    let second = match (w.second, w.ns_per_second) {
        (Some(SecondWork::Enqueued), Some(ns)) => {
            format!(" + {} per entity enqueued", signed_ns(ns))
        }
        (Some(SecondWork::Queued), Some(ns)) => format!(" + {} per task queued", signed_ns(ns)),
        _ => String::new(),
    };
    format!(
        "{} + {} per cfs_rq unthrottled{second} (n {}, R\u{b2} {:.2}); up to {} unthrottle(s) \
         in one {at} seen; {}",
        signed_ns(w.fixed_ns),
        signed_ns(w.ns_per_unthrottle),
        w.n,
        w.r2,
        w.max_unthrottles,
        targets(
            f,
            &w.reach_period,
            &w.reach_watchdog,
            &format!("unthrottles in one {at}")
        ),
    )
}

fn timers(f: &Forecast, t: &TimerFit) -> String {
    format!(
        "{} + {} per period timer (n {}, R\u{b2} {:.2}); up to {} timer(s) in one interrupt \
         seen; {}",
        signed_ns(t.fixed_ns),
        signed_ns(t.ns_per_timer),
        t.n,
        t.r2,
        t.max_timers,
        targets(
            f,
            &t.reach_period,
            &t.reach_watchdog,
            "timers in one interrupt"
        ),
    )
}

/// One line for `watch`: what would reach watchdog_thresh, by the callback fit and by the
/// interrupt fit; None when neither could be fitted (the report says why).
pub fn forecast_headline(f: &Forecast) -> Option<String> {
    let mut parts = Vec::new();
    if let Some(r) = f
        .callback
        .fitted()
        .and_then(|w| w.reach_watchdog.map(|r| (w, r)))
    {
        parts.push(format!(
            "{} unthrottles in one callback (seen: {})",
            r.1.count, r.0.max_unthrottles
        ));
    }
    if let Some(r) = f
        .span
        .fitted()
        .and_then(|t| t.reach_watchdog.map(|r| (t, r)))
    {
        parts.push(format!(
            "{} period timers in one interrupt (seen: {})",
            r.1.count, r.0.max_timers
        ));
    }
    (!parts.is_empty()).then(|| format!("forecast: watchdog_thresh at {}", parts.join(" or ")))
}

/// `(label, sentence)` per fit: the callback, the CSD, the timer interrupt.
pub fn forecast_sentences(f: &Forecast) -> [(&'static str, String); 3] {
    let work_or_why = |fit: &Fit<WorkFit>, at: &str| match fit {
        Fit::Fitted(w) => work(f, w, at),
        Fit::Unavailable { why } => format!("unavailable: {why}"),
    };
    [
        ("callback", work_or_why(&f.callback, "callback")),
        ("csd", work_or_why(&f.csd, "CSD")),
        (
            "interrupt",
            match &f.span {
                Fit::Fitted(t) => timers(f, t),
                Fit::Unavailable { why } => format!("unavailable: {why}"),
            },
        ),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn forecast() -> Forecast {
        Forecast {
            shortest_period_ns: Some(5_000_000),
            watchdog_ns: Some(10_000_000_000),
            worst_span_rest_ns: Some(20_000),
            callback: Fit::Fitted(WorkFit {
                n: 400,
                r2: 0.91,
                fixed_ns: 3_000.0,
                ns_per_unthrottle: 1_500.0,
                second: Some(SecondWork::Enqueued),
                ns_per_second: Some(200.0),
                second_per_unthrottle: 2.0,
                ns_per_unthrottle_all_in: 1_900.0,
                max_unthrottles: 4,
                reach_period: Some(Reach {
                    target_ns: 5_000_000,
                    count: 2_614,
                    reached: false,
                }),
                reach_watchdog: Some(Reach {
                    target_ns: 10_000_000_000,
                    count: 5_263_148,
                    reached: false,
                }),
            }),
            csd: Fit::Unavailable {
                why: "no async unthrottle: before 6.3".into(),
            },
            span: Fit::Fitted(TimerFit {
                n: 30,
                r2: 0.5,
                fixed_ns: -1_000.0,
                ns_per_timer: 6_000_000.0,
                max_timers: 2,
                reach_period: Some(Reach {
                    target_ns: 5_000_000,
                    count: 1,
                    reached: true,
                }),
                reach_watchdog: None,
            }),
            moments: Default::default(),
        }
    }

    #[test]
    fn each_fit_reads_as_its_costs_and_what_would_reach_the_targets() {
        let [(l0, cb), (l1, csd), (l2, irq)] = forecast_sentences(&forecast());
        assert_eq!((l0, l1, l2), ("callback", "csd", "interrupt"));
        assert_eq!(
            cb,
            "3.00 us + 1.50 us per cfs_rq unthrottled + 200 ns per entity enqueued (n 400, \
             R\u{b2} 0.91); up to 4 unthrottle(s) in one callback seen; 2614 would reach the \
             shortest period (5.00 ms); 5263148 would reach watchdog_thresh (10.0 s)"
        );
        assert_eq!(csd, "unavailable: no async unthrottle: before 6.3");
        assert!(
            irq.starts_with("-1.00 us + 6.00 ms per period timer"),
            "{irq}"
        );
        assert_eq!(
            forecast_headline(&forecast()).unwrap(),
            "forecast: watchdog_thresh at 5263148 unthrottles in one callback (seen: 4)"
        );
        assert!(
            irq.ends_with("the shortest period (5.00 ms) already reached by the most timers in one interrupt seen"),
            "{irq}"
        );
    }
}
