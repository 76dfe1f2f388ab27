//! Which style each probe should get, per backend and kernel.

use super::*;
use crate::expect::want::{ENOENT, EPERM};

#[test]
fn styles_per_backend() {
    let f = facts_7x();
    assert_eq!(want(&f, "auto", "period_timer", &[]).style, Some("fentry"));
    assert_eq!(want(&f, "kprobe", "distribute", &[]).style, Some("kprobe"));
    assert_eq!(want(&f, "tracepoint", "unthrottle", &[]).style, None);
    let enq = want(&f, "fentry", "enqueue", &[]);
    assert_eq!(
        (enq.style, enq.target.as_str()),
        (Some("fentry"), ENQUEUE_TASK_FAIR_FN)
    );
    let a = want(&f, "tracepoint", "async_unthrottle", &[]);
    assert_eq!((a.style, a.target.as_str()), (Some("tracepoint"), CSD_TP));
    assert_eq!(want(&f, "kprobe", "runnable", &[]).style, Some("raw_tp"));
    let mut old = f.clone();
    old.set(&format!("symbol.{CSD_UNTHROTTLE_FN}"), false);
    assert_eq!(want(&old, "auto", "async_unthrottle", &[]).style, None);
}

#[test]
fn kernel_refusal_is_not_offering() {
    let f = host_618();
    let at = |style: &str, stage: &str, errno: Option<i64>| Attempt {
        style: style.into(),
        stage: stage.into(),
        errno,
    };
    let refused = [
        at("fentry", "load", Some(EPERM)),
        at("kprobe", "attach", Some(ENOENT)),
    ];
    let w = want(&f, "auto", "period_timer", &refused);
    assert_eq!(w.style, Some("tracepoint"));
    // A failure that is not a refusal keeps fentry expected.
    let w = want(
        &f,
        "auto",
        "period_timer",
        &[at("fentry", "load", Some(22))],
    );
    assert_eq!(w.style, Some("fentry"));
    assert!(kernel_refused(&refused, "fentry"));
    assert!(
        !kernel_refused(&refused, "kprobe"),
        "ENOENT is no refusal of a kprobe"
    );
    assert!(!kernel_refused(
        &[at("fentry", "check", Some(EPERM))],
        "fentry"
    ));
    let enoent = [at("raw_tp", "attach", Some(ENOENT))];
    assert!(kernel_refused(&enoent, "raw_tp"));
    assert_eq!(want(&f, "kprobe", "runnable", &enoent).style, None);
}

#[test]
fn irq_span_styles() {
    let f = facts_7x();
    let w = want(&f, "auto", "irq_span", &[]);
    assert_eq!(
        (w.style, w.target.as_str()),
        (Some("tracepoint"), LOCAL_TIMER_TP)
    );
    let w = want(&f, "kprobe", "irq_span", &[]);
    assert_eq!(
        (w.style, w.target.as_str()),
        (Some("kprobe"), HRTIMER_INTERRUPT_FN)
    );
    assert_eq!(
        want(&f, "fentry", "irq_span", &[]).style,
        Some("tracepoint")
    );
    assert_eq!(
        want(&f, "tracepoint", "irq_span", &[]).style,
        Some("tracepoint")
    );
    // No kprobe PMU (the CI host): the tracepoints, and nothing for --backend kprobe.
    let h = host_618();
    assert_eq!(want(&h, "auto", "irq_span", &[]).style, Some("tracepoint"));
    assert_eq!(want(&h, "kprobe", "irq_span", &[]).style, None);
    // Not x86: kprobe under auto, nothing for the tracepoint backend.
    let mut arm = f.clone();
    arm.set(&format!("raw_tp.{LOCAL_TIMER_TP}"), false);
    assert_eq!(want(&arm, "auto", "irq_span", &[]).style, Some("kprobe"));
    assert_eq!(want(&arm, "tracepoint", "irq_span", &[]).style, None);
}

#[test]
fn period_timers_interleave_from_6_4() {
    let mut f = facts_7x();
    assert_eq!(f.version(), Some((7, 2)));
    assert!(f.interleaved_period_timers());
    for (rel, inter) in [
        ("6.12.117+deb13-cloud-amd64", true),
        ("6.4.0", true),
        ("6.1.0-50-cloud-amd64", false),
        ("5.10.0-32-cloud-amd64", false),
        ("4.18.0-80.5.1.el8_0.x86_64", false),
    ] {
        f.release = rel.into();
        assert_eq!(f.interleaved_period_timers(), inter, "{rel}");
    }
    assert_eq!(cofire_min_timers(&f), COFIRE_MIN_TIMERS);
}
