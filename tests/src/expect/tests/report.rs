//! Reports against the facts, their own arithmetic, and doctor's output.

use super::*;

#[test]
fn good_report_passes_without_async_yet() {
    let v = check_report(&facts_7x(), "auto", &report(), &C, &F);
    assert!(v.failures.is_empty(), "{:?}", v.failures);
    assert_eq!(v.notes.len(), 2, "{:?}", v.notes);
}

#[test]
fn async_is_checked_once_present() {
    let mut r = report();
    r["probes"]["async_unthrottle"] =
        serde_json::json!({"attached": true, "how": "fentry", "target": "__cfsb_csd_unthrottle"});
    r["figures"]["async_unthrottle"] = serde_json::json!({"available": true});
    let v = check_report(&facts_7x(), "auto", &r, &C, &F);
    assert_eq!(v.failures.len(), 1, "{:?}", v.failures);
    // Too few CSDs for 800 periods.
    r["culprit"]["async_unthrottle"] = serde_json::json!({"csds": 50, "unthrottled": 50});
    let v = check_report(&facts_7x(), "auto", &r, &C, &F);
    assert_eq!(v.failures.len(), 1, "{:?}", v.failures);
    r["culprit"]["async_unthrottle"] = serde_json::json!({"csds": 400, "unthrottled": 400});
    let v = check_report(&facts_7x(), "auto", &r, &C, &F);
    assert!(
        v.failures.is_empty() && v.notes.is_empty(),
        "{:?} {:?}",
        v.failures,
        v.notes
    );
}

#[test]
fn wrong_style_and_missing_figure_fail() {
    let mut r = report();
    r["probes"]["distribute"]["how"] = "kprobe".into();
    r["culprit"]["enqueued_per_period"] = Value::Null;
    r["figures"]["runnable"]["available"] = false.into();
    let v = check_report(&facts_7x(), "auto", &r, &C, &F);
    // distribute style; enqueued p50; runnable unavailable vs attached, without a reason,
    // and runnable_per_period set although unavailable.
    assert_eq!(v.failures.len(), 5, "{:#?}", v.failures);
}

#[test]
fn consistent_report_passes() {
    assert_eq!(consistency(&report()), Vec::<String>::new());
}

#[test]
fn inconsistent_figures_fail() {
    let cases: [(&str, Value); 7] = [
        ("/cpus/0/headroom_ns", (T - 9001).into()),
        ("/cpus/0/worst_irq_span/timers_ns", 9500.into()),
        ("/cpus/1/headroom_basis", "period_callback".into()),
        ("/headroom_ns", (T - 4000).into()),
        ("/cgroups/0/worst_irq_span/own_ns", 8000.into()),
        ("/cgroups/0/spread/per_period/max", 3.into()),
        ("/cgroups/0/spread/per_period/count", 799.into()),
    ];
    for (ptr, val) in cases {
        let mut r = report();
        *r.pointer_mut(ptr).unwrap() = val;
        let bad = consistency(&r);
        assert!(!bad.is_empty(), "{ptr} changed, consistency still passes");
    }
    // A cgroup whose span is shorter than its worst callback takes the callback.
    let mut r = report();
    r["cgroups"][0]["callback_ns"]["max"] = 9500.into();
    assert_eq!(consistency(&r).len(), 1, "{:?}", consistency(&r));
}

#[test]
fn doctor_output_parses_and_checks() {
    // As doctor prints it into a pipe: wrapped at 80 columns, continuations indented.
    let text = "kernel      7.2\nframe       fentry\n\
                probe       distribute       fentry distribute_cfs_runtime\n\
                probe       unthrottle       unavailable: no\n\
                leakcheck   20 attach/detach cycles: programs 3 -> 3 (attached 17), maps 1\n\
                \x20           -> 1 (attached 10), links 0 -> 0 (attached 8): ok\n\
                verdict     ready — period-timer callbacks timed by fentry; unavailable:\n\
                \x20           unthrottle (reasons above)\n";
    let d = Doctor::parse(text);
    assert_eq!(d.frame.as_deref(), Some("fentry"));
    assert_eq!(d.probes["distribute"].as_deref(), Some("fentry"));
    assert_eq!(d.probes["unthrottle"], None);
    assert!(
        d.leakcheck.as_deref().is_some_and(|l| l.ends_with(": ok")),
        "{d:?}"
    );
    assert!(
        d.verdict
            .as_deref()
            .is_some_and(|v| v.ends_with("unthrottle (reasons above)"))
    );
    let r = report();
    let bad = d.check(0, 20, Some(&r));
    assert_eq!(bad.len(), 1, "{bad:?}"); // unthrottle: doctor unavailable, report fentry
    assert_eq!(d.check(1, 10, None).len(), 2);
    // No verdict line, or a failing one with exit 0: both told.
    let cut = Doctor::parse(&text[..text.find("verdict").unwrap_or(0)]);
    assert_eq!(
        cut.check(0, 20, None).len(),
        1,
        "{:?}",
        cut.check(0, 20, None)
    );
    let mut wrong = d.clone();
    wrong.verdict = Some("cannot trace — btf failed (see above)".into());
    assert_eq!(wrong.check(0, 20, None).len(), 1);
}
