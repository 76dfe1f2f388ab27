//! Findings: each fix's state and the node's exposure judged into a severity, with the
//! evidence, what decided it, and what to do. The rules, in one place (the README says them
//! too):
//!
//! - a lockup fix (`fix.distribute_loop`, `fix.period_overrun`) absent: **risk** (the overrun
//!   fix only **warn** while no cgroup has a quota); undecidable: **warn**;
//! - the other fixes absent: **info** (their weight is judged by `exposure.timer_load`);
//! - `exposure.timer_load`, W = CPUs x throttled cgroups sharing one period: on a kernel whose
//!   timers are aligned (no 41abdba93747) and that unthrottles in the callback (no
//!   8ad075c2eb1f) **risk** from [`RISK_WORK`], **warn** from [`WARN_WORK`]; aligned with
//!   async unthrottle **warn** from [`RISK_WORK`]; else **info** while anything is throttled,
//!   **ok** when nothing is;
//! - `exposure.period`: a quota period under [`SHORT_PERIOD_US`] **warn** (**risk** without
//!   the overrun fix), under the default 100 ms **info**;
//! - `exposure.quota_depth`: nested quotas **info**; `exposure.walk`: a walk cut at its cap
//!   **info**;
//! - `watchdog.panic`: `hardlockup_panic=1` with throttling now **warn**, without **info**;
//!   `watchdog.enabled`: the hard-lockup detector off **info**.
use serde::Serialize;

use super::exposure::Exposure;
use super::fixes::{Fix, FixState};
use crate::model::host::WatchdogFacts;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    Ok,
    Info,
    Warn,
    Risk,
}

impl Severity {
    pub fn as_str(self) -> &'static str {
        match self {
            Severity::Ok => "ok",
            Severity::Info => "info",
            Severity::Warn => "warn",
            Severity::Risk => "risk",
        }
    }

    /// Doctor's exit status for a worst severity (when its tracing checks passed).
    pub fn exit_status(self) -> u8 {
        match self {
            Severity::Ok | Severity::Info => 0,
            Severity::Warn => EXIT_WARN,
            Severity::Risk => EXIT_RISK,
        }
    }
}

/// Exit statuses of `doctor` (next to 1 error/cannot trace, 2 usage; 3 and 4 are the gate's).
pub const EXIT_WARN: u8 = 5;
pub const EXIT_RISK: u8 = 6;

/// W (CPUs x throttled cgroups sharing a period) from which an aligned, synchronous kernel is
/// at risk: 256 CPUs x ~400 cgroups, the scale where hard lockups were reported before 6.3.
pub const RISK_WORK: u64 = 100_000;
/// ...and from which it is worth a warning (48 CPUs x ~200 cgroups).
pub const WARN_WORK: u64 = 10_000;
/// A period this short makes the timer fire 20 times more often than the default, and a
/// callback longer than the period is the overrun 2e8e19226398 bounded.
pub const SHORT_PERIOD_US: u64 = 5_000;
pub const DEFAULT_PERIOD_US: u64 = 100_000;

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Finding {
    pub id: String,
    pub severity: Severity,
    pub title: String,
    pub evidence: String,
    pub basis: String,
    /// What to do; None when there is nothing to do.
    pub advice: Option<String>,
}

fn finding(
    id: &str,
    severity: Severity,
    title: &str,
    evidence: String,
    basis: String,
    advice: Option<&str>,
) -> Finding {
    Finding {
        id: id.into(),
        severity,
        title: title.into(),
        evidence,
        basis,
        advice: advice.map(str::to_string),
    }
}

fn present(states: &[FixState], f: Fix) -> Option<bool> {
    states.iter().find(|s| s.fix == f).and_then(|s| s.present)
}

/// Every finding, in a stable order: the fixes, the exposure, the watchdog.
pub fn judge(states: &[FixState], e: &Exposure, wd: &WatchdogFacts) -> Vec<Finding> {
    let mut out: Vec<Finding> = states.iter().map(|s| fix_finding(s, e)).collect();
    out.push(timer_load(states, e));
    out.push(period(states, e));
    out.push(quota_depth(e));
    if e.walk_capped || e.sample_capped {
        out.push(finding(
            "exposure.walk",
            Severity::Info,
            "cgroup walk cut at its cap",
            format!(
                "walked {} cgroups (cap {}){}; the figures cover only those",
                e.cgroups_walked,
                e.walk_cap,
                if e.sample_capped {
                    format!(", sampled {} quota'd cgroups", e.sampled_cgroups)
                } else {
                    String::new()
                }
            ),
            format!("walk of {}", e.hierarchy),
            None,
        ));
    }
    out.extend(watchdog(wd, e));
    out
}

fn fix_finding(s: &FixState, e: &Exposure) -> Finding {
    let f = s.fix;
    let (maj, min) = f.upstream();
    let name = if f.commit().is_empty() {
        format!("v{maj}.{min}")
    } else {
        format!("{} (v{maj}.{min})", f.commit())
    };
    let lockup_fix = matches!(f, Fix::DistributeLoop | Fix::PeriodOverrun);
    let (severity, evidence, advice) = match s.present {
        Some(true) => (Severity::Ok, format!("{name}: present"), None),
        Some(false) => {
            let sev = match f {
                Fix::DistributeLoop => Severity::Risk,
                Fix::PeriodOverrun if e.quota_cgroups > 0 => Severity::Risk,
                Fix::PeriodOverrun => Severity::Warn,
                _ => Severity::Info,
            };
            let advice = match f {
                Fix::DistributeLoop | Fix::PeriodOverrun => {
                    "upgrade the kernel (or the distribution's backport); until then keep quota periods at 100 ms and watch the node with `cfstrace watch`"
                }
                Fix::AsyncUnthrottle => {
                    "one period-timer callback unthrottles every CPU's cfs_rq with IRQs off: keep throttled cgroups x CPUs small (see exposure.timer_load) or move to 6.3+"
                }
                Fix::InterleavedTimers => {
                    "timers of one period expire together: avoid giving many throttled cgroups the same short period, or move to 6.4+"
                }
                Fix::TaskThrottle => {
                    "throttling is per cfs_rq: unthrottle re-enqueues whole hierarchies; 6.18+ throttles tasks at return to user"
                }
                Fix::Burst => "no burst: bursty workloads need a larger quota to avoid throttling",
            };
            (sev, format!("{name}: absent"), Some(advice))
        }
        None => (
            if lockup_fix {
                Severity::Warn
            } else {
                Severity::Info
            },
            format!("{name}: cannot tell"),
            Some("check the kernel's changelog for this commit"),
        ),
    };
    finding(
        f.id(),
        severity,
        f.title(),
        evidence,
        s.basis.clone(),
        advice,
    )
}

fn timer_load(states: &[FixState], e: &Exposure) -> Finding {
    let aligned = present(states, Fix::InterleavedTimers) != Some(true);
    let sync = present(states, Fix::AsyncUnthrottle) != Some(true);
    let w = e.cpu_cgroup_work;
    let severity = if e.throttled_cgroups == 0 {
        Severity::Ok
    } else if aligned && sync && w >= RISK_WORK {
        Severity::Risk
    } else if aligned && (w >= RISK_WORK || (sync && w >= WARN_WORK)) {
        Severity::Warn
    } else {
        Severity::Info
    };
    let evidence = if e.throttled_cgroups == 0 {
        format!(
            "no cgroup throttled during the {} s sample ({} with a quota)",
            e.sample_s, e.quota_cgroups
        )
    } else {
        format!(
            "{} cgroups throttled during the {} s sample; {} of them share the period {} ms: {} CPUs x {} = {} cfs_rqs one timer interrupt could unthrottle{}",
            e.throttled_cgroups,
            e.sample_s,
            e.throttled_sharing_period,
            e.busiest_period_us.unwrap_or(0) as f64 / 1000.0,
            e.ncpus,
            e.throttled_sharing_period,
            w,
            match (aligned, sync) {
                (true, true) => " (timers aligned, unthrottled inside the callback)",
                (true, false) => " (timers aligned; remote cfs_rqs unthrottled in CSDs)",
                (false, _) => " (timers interleaved: they rarely expire together)",
            }
        )
    };
    let advice = (severity >= Severity::Warn).then_some(
        "spread periods (or quotas) so fewer throttled cgroups share one, raise quotas of cgroups throttled every period, and watch the callback with `cfstrace watch`",
    );
    finding(
        "exposure.timer_load",
        severity,
        "work one period-timer interrupt could hold",
        evidence,
        format!(
            "cpu.stat nr_throttled deltas over {} s; risk from {RISK_WORK}, warn from {WARN_WORK} on aligned kernels",
            e.sample_s
        ),
        advice,
    )
}

fn period(states: &[FixState], e: &Exposure) -> Finding {
    let overrun_fix = present(states, Fix::PeriodOverrun) == Some(true);
    let (severity, evidence) = match e.shortest_period_us {
        None => (Severity::Ok, "no cgroup has a quota".to_string()),
        Some(p) => (
            if p < SHORT_PERIOD_US && !overrun_fix {
                Severity::Risk
            } else if p < SHORT_PERIOD_US {
                Severity::Warn
            } else if p < DEFAULT_PERIOD_US {
                Severity::Info
            } else {
                Severity::Ok
            },
            format!(
                "shortest period in use {} ms ({} cgroups with a quota)",
                p as f64 / 1000.0,
                e.quota_cgroups
            ),
        ),
    };
    finding(
        "exposure.period",
        severity,
        "shortest CFS period in use",
        evidence,
        format!(
            "cpu.max / cpu.cfs_period_us of every cgroup walked; warn under {} ms, info under {} ms",
            SHORT_PERIOD_US / 1000,
            DEFAULT_PERIOD_US / 1000
        ),
        (severity >= Severity::Warn).then_some(
            "use periods of 100 ms (the default) unless latency needs less; each period is one timer callback with IRQs off",
        ),
    )
}

fn quota_depth(e: &Exposure) -> Finding {
    let d = e.max_quota_depth;
    finding(
        "exposure.quota_depth",
        if d >= 2 { Severity::Info } else { Severity::Ok },
        "nesting of quota'd cgroups",
        format!("deepest chain of quota'd cgroups: {d}"),
        "quotas on each cgroup's chain from the root".into(),
        (d >= 2).then_some("each quota'd level has its own period timer; quota the leaves or the parent, rarely both"),
    )
}

fn watchdog(wd: &WatchdogFacts, e: &Exposure) -> Vec<Finding> {
    let mut out = Vec::new();
    let thresh = wd
        .thresh_s
        .map_or("watchdog_thresh unreadable".to_string(), |t| {
            format!("watchdog_thresh {t} s")
        });
    let nmi = match wd.nmi_watchdog {
        Some(v) => format!("nmi_watchdog {}", u8::from(v)),
        None => "no nmi_watchdog".into(),
    };
    let panic = match wd.hardlockup_panic {
        Some(v) => format!("hardlockup_panic {}", u8::from(v)),
        None => "no hardlockup_panic".into(),
    };
    let evidence = format!("{thresh}, {nmi}, {panic}");
    let basis = "/proc/sys/kernel/{watchdog_thresh,nmi_watchdog,hardlockup_panic}".to_string();
    let panics = wd.hardlockup_panic == Some(true);
    let severity = match (panics, e.throttled_cgroups > 0) {
        (true, true) => Severity::Warn,
        (true, false) => Severity::Info,
        _ => Severity::Ok,
    };
    out.push(finding(
        "watchdog.panic",
        severity,
        "a hard lockup panics the node",
        format!("{evidence}; {} cgroups throttled now", e.throttled_cgroups),
        basis.clone(),
        (severity == Severity::Warn).then_some(
            "with throttling present a long period-timer callback ends in a panic: check the headroom with `cfstrace watch` or `record --fail-under`",
        ),
    ));
    let detector_off = wd.nmi_watchdog == Some(false) || !wd.enabled;
    out.push(finding(
        "watchdog.enabled",
        if detector_off {
            Severity::Info
        } else {
            Severity::Ok
        },
        "hard-lockup detector",
        evidence,
        basis,
        detector_off.then_some(
            "the hard-lockup detector is off: a stuck CPU is not reported (nor panics); the headroom is still judged against watchdog_thresh",
        ),
    ));
    out
}

/// The worst severity of the findings (ok when there are none).
pub fn worst(findings: &[Finding]) -> Severity {
    findings
        .iter()
        .map(|f| f.severity)
        .max()
        .unwrap_or(Severity::Ok)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::doctor::exposure::{PeriodStats, QuotaCgroup, Walked, exposure};
    use crate::doctor::fixes::{KernelMarks, decide};

    fn states(release: &str) -> Vec<FixState> {
        decide(&KernelMarks {
            release: release.into(),
            ..KernelMarks::default()
        })
    }

    fn node(throttled: usize, period_us: u64, ncpus: u32) -> Exposure {
        let quota = (0..throttled)
            .map(|i| QuotaCgroup {
                path: format!("/c{i}"),
                period_us,
                quota_us: 1000,
                quota_depth: 1,
                before: Some(PeriodStats::default()),
                after: Some(PeriodStats {
                    nr_periods: 10,
                    nr_throttled: 5,
                }),
            })
            .collect();
        exposure(
            &Walked {
                quota,
                sample_s: 1.0,
                ..Walked::default()
            },
            ncpus,
        )
    }

    fn wd(panic: bool) -> WatchdogFacts {
        WatchdogFacts {
            thresh_s: Some(10),
            enabled: true,
            nmi_watchdog: Some(true),
            hardlockup_panic: Some(panic),
        }
    }

    fn sev(f: &[Finding], id: &str) -> Severity {
        f.iter().find(|x| x.id == id).unwrap().severity
    }

    #[test]
    fn an_old_kernel_without_the_distribute_fix_is_at_risk() {
        let f = judge(&states("3.10.0"), &node(0, 100_000, 4), &wd(false));
        assert_eq!(sev(&f, "fix.distribute_loop"), Severity::Risk);
        assert_eq!(worst(&f), Severity::Risk);
        assert_eq!(worst(&f).exit_status(), 6);
    }

    #[test]
    fn the_overrun_fix_matters_once_quotas_exist() {
        let s = states("4.18.0-80.el8.x86_64");
        assert_eq!(
            sev(
                &judge(&s, &node(1, 100_000, 4), &wd(false)),
                "fix.period_overrun"
            ),
            Severity::Risk
        );
        let none = exposure(&Walked::default(), 4);
        assert_eq!(
            sev(&judge(&s, &none, &wd(false)), "fix.period_overrun"),
            Severity::Warn
        );
        let patched = states("4.18.0-80.5.1.el8_0.x86_64");
        assert_eq!(
            sev(&judge(&patched, &none, &wd(false)), "fix.period_overrun"),
            Severity::Ok
        );
    }

    #[test]
    fn timer_load_follows_the_kernel_and_the_scale() {
        // 5.10: aligned timers, synchronous unthrottle.
        let old = states("5.10.0");
        let j = |s: &[FixState], n, cpus| {
            sev(
                &judge(s, &node(n, 100_000, cpus), &wd(false)),
                "exposure.timer_load",
            )
        };
        assert_eq!(j(&old, 0, 256), Severity::Ok);
        assert_eq!(j(&old, 1, 2), Severity::Info);
        assert_eq!(j(&old, 250, 48), Severity::Warn); // 12,000
        assert_eq!(j(&old, 400, 256), Severity::Risk); // 102,400
        // 6.3: aligned but async.
        let v63 = states("6.3.0");
        assert_eq!(j(&v63, 250, 48), Severity::Info);
        assert_eq!(j(&v63, 400, 256), Severity::Warn);
        // 6.4+: interleaved.
        assert_eq!(j(&states("6.12.0"), 400, 256), Severity::Info);
        let e = node(400, 100_000, 256);
        assert_eq!(e.cpu_cgroup_work, 102_400);
    }

    #[test]
    fn short_periods_and_depth() {
        let f = judge(&states("6.1.0"), &node(1, 2_000, 2), &wd(false));
        assert_eq!(sev(&f, "exposure.period"), Severity::Warn);
        let f = judge(&states("4.19.0"), &node(1, 2_000, 2), &wd(false));
        assert_eq!(sev(&f, "exposure.period"), Severity::Risk);
        let f = judge(&states("6.1.0"), &node(1, 10_000, 2), &wd(false));
        assert_eq!(sev(&f, "exposure.period"), Severity::Info);
        let f = judge(&states("6.1.0"), &node(1, 100_000, 2), &wd(false));
        assert_eq!(sev(&f, "exposure.period"), Severity::Ok);
        assert_eq!(sev(&f, "exposure.quota_depth"), Severity::Ok);
        let mut e = node(1, 100_000, 2);
        e.max_quota_depth = 2;
        assert_eq!(
            sev(
                &judge(&states("6.1.0"), &e, &wd(false)),
                "exposure.quota_depth"
            ),
            Severity::Info
        );
    }

    #[test]
    fn panic_on_lockup_with_throttling_warns() {
        let s = states("6.18.0");
        assert_eq!(
            sev(
                &judge(&s, &node(1, 100_000, 2), &wd(true)),
                "watchdog.panic"
            ),
            Severity::Warn
        );
        assert_eq!(
            sev(
                &judge(&s, &node(0, 100_000, 2), &wd(true)),
                "watchdog.panic"
            ),
            Severity::Info
        );
        let f = judge(&s, &node(0, 100_000, 2), &wd(false));
        assert_eq!(sev(&f, "watchdog.panic"), Severity::Ok);
        // A current kernel, nothing throttled, no panic: all ok or info.
        assert!(worst(&f) <= Severity::Info, "{f:#?}");
        let mut off = wd(false);
        off.nmi_watchdog = Some(false);
        assert_eq!(
            sev(&judge(&s, &node(0, 100_000, 2), &off), "watchdog.enabled"),
            Severity::Info
        );
    }

    #[test]
    fn exit_statuses() {
        assert_eq!(Severity::Ok.exit_status(), 0);
        assert_eq!(Severity::Info.exit_status(), 0);
        assert_eq!(Severity::Warn.exit_status(), 5);
        assert_eq!(Severity::Risk.exit_status(), 6);
        assert_eq!(worst(&[]), Severity::Ok);
    }
}
