//! The report's sentences: the culprit's reason, precursor phrases, workload labels, and the
//! units they are written in. They go into the JSON (`culprit.reason`, `evidence`, `note`), so
//! they live here; the renderers reuse them.
use std::fmt::Write as _;

use super::model::{
    Busiest, CgroupReport, HeadroomBasis, PrecursorReport, WorstIrqsOff, cgroup_name,
};
use crate::model::host::WatchdogFacts;
use crate::model::records::ProcessInfo;
use crate::model::workload::{Workload, WorkloadKind};

/// `812 ns`, `41.2 us`, `310 us`, `1.25 ms`, `12.3 s`: three significant digits.
pub fn human_ns(ns: u64) -> String {
    if ns < 1_000 {
        return format!("{ns} ns");
    }
    const UNITS: [(f64, &str); 3] = [(1e3, "us"), (1e6, "ms"), (1e9, "s")];
    let mut i = if ns < 1_000_000 {
        0
    } else if ns < 1_000_000_000 {
        1
    } else {
        2
    };
    let mut v = ns as f64 / UNITS[i].0;
    // 999.7 us rounds to "1000 us": say 1.00 ms instead.
    if v >= 999.5 && i < 2 {
        i += 1;
        v = ns as f64 / UNITS[i].0;
    }
    let digits = if v >= 99.95 {
        0
    } else if v >= 9.995 {
        1
    } else {
        2
    };
    format!("{v:.digits$} {}", UNITS[i].1)
}

/// Headroom in seconds to 4 decimals, trailing zeros trimmed (`9.9997 s`, `10 s`).
pub fn seconds(ns: i64) -> String {
    let s = format!("{:.4}", ns as f64 / 1e9);
    let s = s.trim_end_matches('0').trim_end_matches('.');
    format!("{s} s")
}

/// `value` to at least `digits` decimals, with as many more as it takes (up to 9, then the
/// exact value) for the printed number to sit on the same side of every threshold as the
/// value itself: 99.9994 % is never printed `100.00%` next to "below 100%". Judgements
/// compare the exact values; this is only how they are written, in text, the live view,
/// the JSON's prose and (parsed back) its rounded numbers.
pub fn decimals_against(value: f64, digits: usize, thresholds: &[f64]) -> String {
    let below = |v: f64| thresholds.iter().map(move |t| v < *t);
    for d in digits..=digits.max(9) {
        let s = format!("{value:.d$}");
        if s.parse::<f64>()
            .is_ok_and(|shown| below(shown).eq(below(value)))
        {
            return s;
        }
    }
    // Rust's shortest round-trip form: exactly `value`.
    format!("{value}")
}

/// A headroom in seconds to 4 decimals, trailing zeros trimmed, never printed on the other
/// side of watchdog_thresh or of `also_s` (a highlight threshold in seconds) than it is:
/// 9.99996 s of a 10 s threshold is `9.99996 s`, not `10 s`.
pub fn seconds_of(ns: i64, thresh_s: Option<u64>, also_s: Option<f64>) -> String {
    let thresholds: Vec<f64> = thresh_s
        .map(|t| t as f64)
        .into_iter()
        .chain(also_s)
        .collect();
    let s = decimals_against(ns as f64 / 1e9, 4, &thresholds);
    let s = if s.contains('.') {
        s.trim_end_matches('0').trim_end_matches('.')
    } else {
        &s
    };
    format!("{s} s")
}

/// The plural `s` of a count.
pub fn plural_s(n: impl Into<u64>) -> &'static str {
    if n.into() == 1 { "" } else { "s" }
}

/// `1 callback`, `3 callbacks`.
fn plural(n: u64, one: &str, many: &str) -> String {
    if n == 1 {
        format!("1 {one}")
    } else {
        format!("{n} {many}")
    }
}

/// Short workload label: `yarn application_…`, `k8s <ns>/<pod>[/<container>]` (else
/// `k8s pod <uid8>`), `docker <name>` / `podman <name>` (else `<id12>`), `systemd foo.service`;
/// None for a plain cgroup.
pub fn workload_label(w: &Workload) -> Option<String> {
    let short = |s: &str, n: usize| s.chars().take(n).collect::<String>();
    // A container's own name where its runtime's state gave one, else its id's first 12.
    let container = |runtime: &str| {
        w.name
            .as_deref()
            .map(|n| format!("{runtime} {n}"))
            .or_else(|| {
                w.container
                    .as_deref()
                    .map(|c| format!("{runtime} {}", short(c, 12)))
            })
    };
    match w.kind {
        WorkloadKind::Yarn => w
            .application
            .as_deref()
            .or(w.container.as_deref())
            .map(|a| format!("yarn {a}")),
        WorkloadKind::Kubernetes => match (&w.namespace, &w.pod, &w.pod_uid, &w.container) {
            (Some(ns), Some(pod), _, _) => Some(match &w.name {
                Some(n) => format!("k8s {ns}/{pod}/{n}"),
                None => format!("k8s {ns}/{pod}"),
            }),
            (_, _, Some(u), _) => Some(format!("k8s pod {}", short(u, 8))),
            (_, _, None, Some(c)) => Some(format!("k8s {}", short(c, 12))),
            (_, _, None, None) => Some("k8s".to_string()),
        },
        WorkloadKind::Docker => container("docker"),
        WorkloadKind::Podman => container("podman"),
        WorkloadKind::Systemd => w.unit.as_deref().map(|u| format!("systemd {u}")),
        WorkloadKind::Cgroup => None,
    }
}

#[cfg(test)]
mod workload_label_tests {
    use super::workload_label;
    use crate::model::workload::{Workload, classify};

    const ID: &str = "cac53b0ad80d533c1092477dca9e63fddcfaa6d7a280eb8a34c598e1b5c44a5c";
    const UID: &str = "3f1c2a8e-6b7d-4e59-9a1c-0d2e4f6a8b90";

    /// (field, value) pairs a runtime's state gave: `name`, `namespace`, `pod`.
    type Names<'a> = &'a [(&'a str, &'a str)];

    fn label(path: &str, names: Names<'_>) -> Option<String> {
        let mut w: Workload = classify(path);
        for (field, v) in names {
            let v = Some(v.to_string());
            match *field {
                "name" => w.name = v,
                "namespace" => w.namespace = v,
                "pod" => w.pod = v,
                _ => unreachable!(),
            }
        }
        workload_label(&w)
    }

    #[test]
    fn names_when_known_ids_otherwise() {
        let rows: [(String, Names<'_>, &str); 8] = [
            (format!("/docker/{ID}"), &[], "docker cac53b0ad80d"),
            (
                format!("/docker/{ID}"),
                &[("name", "web-1")],
                "docker web-1",
            ),
            (
                format!("/libpod_parent/libpod-{ID}"),
                &[],
                "podman cac53b0ad80d",
            ),
            (
                format!("/machine.slice/libpod-{ID}.scope"),
                &[("name", "cfs-probe")],
                "podman cfs-probe",
            ),
            (format!("/kubepods/pod{UID}/{ID}"), &[], "k8s pod 3f1c2a8e"),
            (
                format!("/kubepods/pod{UID}"),
                &[("namespace", "shop"), ("pod", "web-0")],
                "k8s shop/web-0",
            ),
            (
                format!("/kubepods/pod{UID}/{ID}"),
                &[("namespace", "shop"), ("pod", "web-0"), ("name", "nginx")],
                "k8s shop/web-0/nginx",
            ),
            ("/system.slice/a.service".into(), &[], "systemd a.service"),
        ];
        for (path, names, want) in rows {
            assert_eq!(label(&path, names).as_deref(), Some(want), "{path}");
        }
    }
}

/// Distinct comms of the busiest processes, busiest first.
pub fn top_comms(procs: &[ProcessInfo], n: usize) -> Vec<&str> {
    let mut out: Vec<&str> = Vec::new();
    for p in procs {
        if !out.contains(&p.comm.as_str()) {
            out.push(&p.comm);
            if out.len() == n {
                break;
            }
        }
    }
    out
}

fn headroom_phrase(h: Option<i64>, wd: &WatchdogFacts) -> String {
    match (h, wd.thresh_s) {
        (Some(h), Some(t)) if h >= 0 => {
            let off = if wd.enabled {
                ""
            } else {
                " (watchdog disabled)"
            };
            format!(
                "watchdog headroom {} of {t} s{off}",
                seconds_of(h, Some(t), None)
            )
        }
        (Some(h), Some(t)) => format!(
            "exceeds the {t} s watchdog threshold by {}",
            human_ns(h.unsigned_abs())
        ),
        _ => "watchdog_thresh unknown".to_string(),
    }
}

/// `/path (workload)` or `/path (comm, comm)`: who a cgroup is, in a few words.
fn who(c: &CgroupReport) -> String {
    let mut who = c.name().into_owned();
    let label = workload_label(&c.workload).or_else(|| {
        let comms = top_comms(&c.processes, 2);
        (!comms.is_empty()).then(|| comms.join(", "))
    });
    if let Some(l) = label {
        let _ = write!(who, " ({l})");
    }
    who
}

/// Whether the culprit's worst IRQs-off time is the node's worst (same span, or the same
/// figure where spans are not traced).
fn is_node_worst(c: &CgroupReport, node: Option<&WorstIrqsOff>) -> bool {
    let Some(n) = node else { return false };
    match c.headroom_span() {
        Some(w) => {
            n.basis == HeadroomBasis::IrqSpan && n.cpu == w.cpu && n.duration_ns == w.duration_ns
        }
        None => n.duration_ns == c.callback_ns.max,
    }
}

/// The culprit in one line: who, and what it did to the worst IRQs-off time. "its" is the
/// cgroup's own worst, "the node's" the worst of the run; the two never share a phrase.
pub(crate) fn culprit_headline(c: &CgroupReport, node: Option<&WorstIrqsOff>) -> String {
    let whose = if is_node_worst(c, node) {
        "the node's worst"
    } else {
        "its worst"
    };
    match c.headroom_span() {
        Some(w) => format!(
            "{}: {} of {whose} IRQs-off span ({} on cpu{})",
            who(c),
            human_ns(w.own_ns),
            human_ns(w.duration_ns),
            w.cpu
        ),
        None => format!(
            "{}: {} in one callback, {whose} IRQs-off time",
            who(c),
            human_ns(c.callback_ns.max)
        ),
    }
}

/// Why this cgroup is the culprit: who it is, what its timers did to the worst IRQs-off time
/// (its own worst, set against the node's), how long its callbacks held IRQs off in all, what
/// they did, its precursors, the headroom left, and the busiest cgroup by total when that is
/// another one.
pub(crate) fn culprit_reason(
    c: &CgroupReport,
    wd: &WatchdogFacts,
    node: Option<&WorstIrqsOff>,
    busiest: Option<&Busiest>,
) -> String {
    let node_worst = is_node_worst(c, node);
    let mut r = format!("{}: ", who(c));
    match c.headroom_span() {
        Some(w) => {
            let _ = write!(
                r,
                "its timers took {} of {} timer-interrupt span, {} on cpu{} ({} period timer{} \
                 in it)",
                human_ns(w.own_ns),
                if node_worst {
                    "the node's worst"
                } else {
                    "its worst"
                },
                human_ns(w.duration_ns),
                w.cpu,
                w.period_timers,
                plural_s(w.period_timers),
            );
            // A span mostly made of other work: the timers are not what eats the headroom.
            if w.period_timers_ns < w.duration_ns / 2 {
                let _ = write!(
                    r,
                    ", where all period timers took {}: the rest was other interrupt work",
                    human_ns(w.period_timers_ns)
                );
            }
        }
        None => {
            let _ = write!(
                r,
                "its worst single callback held IRQs off for {}{}",
                human_ns(c.callback_ns.max),
                if node_worst { ", the node's worst" } else { "" }
            );
        }
    }
    if let Some(n) = node.filter(|_| !node_worst) {
        let _ = write!(
            r,
            " (the node's worst IRQs-off time: {} on cpu{}, {})",
            human_ns(n.duration_ns),
            n.cpu,
            basis_phrase(n.basis)
        );
    }
    let _ = write!(
        r,
        "; {} period-timer callback{} held IRQs off for {} in total, its worst callback {} \
         (p99 {})",
        c.periods,
        plural_s(c.periods),
        human_ns(c.total_callback_ns),
        human_ns(c.callback_ns.max),
        human_ns(c.callback_ns.p99),
    );
    if let Some(u) = &c.unthrottled_per_period {
        let _ = write!(r, ", {:.1} cfs_rqs unthrottled per period", u.mean);
    }
    // The work 6.3+ moved off the timer's CPU: not in the callback time above.
    if let Some(a) = c.async_unthrottle.as_ref().filter(|a| a.unthrottled > 0) {
        let _ = write!(
            r,
            " + {} cfs_rq{} unthrottled asynchronously on {} CPU{}",
            a.unthrottled,
            plural_s(a.unthrottled),
            a.cpus.len(),
            plural_s(a.cpus.len() as u64),
        );
        if let Some(p) = &a.per_csd_ns {
            let _ = write!(
                r,
                " ({} CSD{}, worst {})",
                a.csds,
                plural_s(a.csds),
                human_ns(p.max)
            );
        }
    }
    // What `runq -g` on a vmcore would have shown.
    if let Some(sp) = c.spread.as_ref().filter(|sp| sp.per_period.max > 0) {
        let _ = write!(r, "; {}", sp.summary);
    }
    if let Some(p) = c.precursors.as_ref().filter(|p| p.any()) {
        let _ = write!(r, "; lockup precursors: {}", precursor_phrase(p));
    }
    let _ = write!(r, "; {}", headroom_phrase(c.headroom_ns, wd));
    if let Some(b) = busiest {
        let _ = write!(
            r,
            "; by total IRQs-off time the busiest cgroup is {} ({} in total, its worst {})",
            cgroup_name(b.id, b.path.as_deref()),
            human_ns(b.total_callback_ns),
            human_ns(b.worst_irqs_off_ns)
        );
    }
    r
}

/// What a node's worst IRQs-off time was.
pub(crate) fn basis_phrase(b: HeadroomBasis) -> &'static str {
    match b {
        HeadroomBasis::IrqSpan => "a timer-interrupt span",
        HeadroomBasis::PeriodCallback => "a period-timer callback",
        HeadroomBasis::AsyncCsd => "an async-unthrottle CSD",
    }
}

/// `period changed 2x by the kernel (1.00 ms -> 4.00 ms), 3 callbacks >= their period, ...`.
pub fn precursor_phrase(p: &PrecursorReport) -> String {
    let mut parts = Vec::new();
    if let (Some(first), Some(last)) = (p.period_changes.first(), p.period_changes.last()) {
        let n = p.period_changes.len() as u64 + p.period_changes_dropped;
        let kernel = p.period_changes.iter().filter(|c| c.by == "kernel").count();
        let by = match kernel {
            0 => String::new(),
            k if k == p.period_changes.len() => " by the kernel".to_string(),
            k => format!(" ({k} by the kernel)"),
        };
        parts.push(format!(
            "period changed {}{by} ({} -> {})",
            plural(n, "time", "times"),
            human_ns(first.from_us.saturating_mul(1_000)),
            human_ns(last.to_us.saturating_mul(1_000))
        ));
    }
    if p.callbacks_over_period > 0 {
        parts.push(format!(
            "{} at least their period",
            plural(p.callbacks_over_period, "callback", "callbacks")
        ));
    }
    if let Some(n) = p.multi_pass_callbacks.filter(|&n| n > 0) {
        parts.push(format!(
            "{} with several distribute passes",
            plural(n, "callback", "callbacks")
        ));
    }
    if !p.kernel_messages.is_empty() {
        parts.push(format!(
            "{} \"period too short\"",
            plural(
                p.kernel_messages.len() as u64,
                "kernel message",
                "kernel messages"
            )
        ));
    }
    parts.join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn human_units() {
        assert_eq!(human_ns(0), "0 ns");
        assert_eq!(human_ns(812), "812 ns");
        assert_eq!(human_ns(1_250), "1.25 us");
        assert_eq!(human_ns(41_200), "41.2 us");
        assert_eq!(human_ns(310_000), "310 us");
        assert_eq!(human_ns(999_700), "1.00 ms");
        assert_eq!(human_ns(41_200_000), "41.2 ms");
        assert_eq!(human_ns(12_345_000_000), "12.3 s");
        assert_eq!(seconds(9_999_700_000), "9.9997 s");
        assert_eq!(seconds(10_000_000_000), "10 s");
        assert_eq!(seconds_of(9_999_700_000, Some(10), None), "9.9997 s");
        assert_eq!(seconds_of(10_000_000_000, Some(10), None), "10 s");
        // Below the threshold never reads as the threshold (the lossy fixture's 53 us).
        assert_eq!(seconds(9_999_960_000), "10 s");
        assert_eq!(seconds_of(9_999_960_000, Some(10), None), "9.99996 s");
        // ...nor as a highlight threshold in seconds (50 % of 10 s).
        assert_eq!(seconds_of(4_999_990_000, Some(10), Some(5.0)), "4.99999 s");
        assert_eq!(seconds_of(5_000_000_000, Some(10), Some(5.0)), "5 s");
    }

    #[test]
    fn decimals_never_cross_a_threshold() {
        // The numbers: headroom 99.9994 % under --highlight-under 100.
        assert_eq!(format!("{:.2}", 99.9994), "100.00");
        assert_eq!(decimals_against(99.9994, 2, &[100.0]), "99.999");
        assert_eq!(decimals_against(99.9994, 4, &[100.0]), "99.9994");
        assert_eq!(decimals_against(99.99994, 2, &[100.0]), "99.9999");
        // Far from every threshold: the digits asked for.
        assert_eq!(decimals_against(99.9994, 2, &[10.0]), "100.00");
        assert_eq!(decimals_against(42.123456, 2, &[10.0, 100.0]), "42.12");
        // At or above a threshold stays at or above it.
        let at = decimals_against(99.99995, 4, &[99.99995]);
        assert!(at.parse::<f64>().unwrap() >= 99.99995, "{at}");
        assert_eq!(decimals_against(100.0, 2, &[100.0]), "100.00");
        // `--fail-under 99.9999`: 99.99989 % must not read as 99.9999 %.
        assert_eq!(format!("{:.4}", 99.99989), "99.9999");
        assert_eq!(decimals_against(99.99989, 4, &[99.9999]), "99.99989");
        // Closer than 9 decimals: the exact value.
        let v = 100.0 - 1e-12;
        assert_eq!(decimals_against(v, 2, &[100.0]).parse::<f64>(), Ok(v));
        assert_eq!(decimals_against(5.0, 2, &[]), "5.00");
    }
}
