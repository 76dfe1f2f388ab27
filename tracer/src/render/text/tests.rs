//! The table's lines, on the report fixtures.
use super::*;
use crate::analysis::{Aggregator, UNRESOLVED_NAME};
use crate::model::records::CaptureHeader;
use crate::render::format::{Tone, paint};
use crate::report::build_report;
use crate::report::fixtures::*;

/// The plain table of what `header` and `agg` give over 8 s.
fn table(header: CaptureHeader, agg: Aggregator) -> String {
    render_text(&build_report(&header, &agg, 8_000_000_000, vec![]), false)
}

/// `t` holds every one of `want`, read as one line (long lines are wrapped to 80 columns).
fn holds(t: &str, want: &[&str]) {
    let flat = t.split_whitespace().collect::<Vec<_>>().join(" ");
    for w in want {
        assert!(t.contains(w) || flat.contains(w), "{w:?} is not in\n{t}");
    }
}

#[test]
fn text_names_the_culprit() {
    let r = build_report(&header(), &agg(), 8_000_000_000, vec![]);
    let t = render_text(&r, false);
    holds(
        &t,
        &[
            "CULPRIT: /yarn/container_e06",
            "yarn appl…",
            // The path column fits the table (the YARN path is 48 chars or fewer here).
            "…12098667219_988894 ",
            "kernel 6.18.44",
            "probes: period_timer tracepoint",
            "  enqueue unavailable: kprobes are not available",
            "systemd cron.service",
            UNRESOLVED_NAME,
            "python",
        ],
    );
    assert!(!t.contains('\x1b'), "no colour when asked for none");
    holds(
        &render_text(&r, true),
        &[&styled_prefix(Tone::Bold, "CULPRIT: ")],
    );
}

#[test]
fn low_headroom_is_red() {
    let mut a = Aggregator::new();
    a.add_cgroup(yarn_record());
    a.add_period(&rec(20, 0, 0, 9_500_000_000, 1));
    let r = build_report(&header(), &a, 1, vec![]);
    assert_eq!(r.headroom_ns, Some(500_000_000));
    holds(&render_text(&r, true), &[&styled_prefix(Tone::Red, "")]);
}

#[test]
fn parent_phrases() {
    let p = |path: &str, q: Option<(u64, u64)>| ParentRecord {
        path: path.into(),
        id: None,
        period_us: q.map(|q| q.1),
        quota_us: q.map(|q| q.0),
    };
    assert_eq!(parents_phrase(&[]), "under /");
    assert_eq!(
        parents_phrase(&[p("/a", Some((20_000, 100_000)))]),
        "under /a (quota 20ms/100ms) <- /"
    );
    assert_eq!(
        parents_phrase(&[p("/a/b", None), p("/a", Some((1_500, 10_000)))]),
        "under /a/b <- /a (quota 1.5ms/10ms) <- /"
    );
    // Cut at MAX_PARENTS: the farthest kept is not top level.
    assert_eq!(
        parents_phrase(&[p("/x/y/z", Some((500, 1_000))), p("/x/y", None)]),
        "under /x/y/z (quota 500us/1ms) <- /x/y <- … <- /"
    );
    assert_eq!(us_short(100_000), "100ms");
    assert_eq!(us_short(2_250), "2.25ms");
    assert_eq!(us_short(999), "999us");
}

#[test]
fn sections() {
    let cases = [
        (
            table(header(), Aggregator::new()),
            vec!["no CFS period-timer callback seen"],
        ),
        (
            table(header(), agg()),
            vec![
                "\n  under /yarn (quota 50ms/100ms) <- /\n",
                "\n  under /system.slice <- /\n",
            ],
        ),
        (table(header(), spread_agg()), vec!["   40/46 "]),
        (
            table(kmsg_header(), precursor_agg()),
            vec![
                "LOCKUP PRECURSORS: 3 period change(s) (1 by the kernel, 1 written)",
                "(no cgroup matched) cpu7: period too short, cannot scale up",
            ],
        ),
    ];
    for (t, want) in cases {
        holds(&t, &want);
    }
}

#[test]
fn irqs_off_by_cpu() {
    let csds = table(async_header(), async_agg());
    holds(
        &csds,
        &[
            " ASYNC       QUOTA  HEADROOM COMM",
            "async unthrottle (CSD, IRQs off) by CPU: 10 CSDs:  cpu2 15.0 us / 5 (max 3.01 us)  \
             cpu1 ",
            "async_unthrottle tracepoint",
        ],
    );
    // A CSD longer than any callback: the node's headroom is the CSD's.
    let big = table(async_header(), long_csd_agg());
    holds(
        &big,
        &["(worst IRQs-off 450 us on cpu5: an async-unthrottle CSD)"],
    );
    let spans = table(irq_header(), span_agg());
    holds(
        &spans,
        &[
            "headroom 99.995% of watchdog_thresh 10 s (worst IRQs-off 500 us on cpu3: a timer \
             interrupt whose 2 period timers took 312 us)",
            "  cpu3 500 us p50 500 us 2.0/span 62%",
            "irq_span tracepoint",
        ],
    );
}

#[test]
fn highlight_threshold() {
    let mut r = build_report(&header(), &agg(), 8_000_000_000, vec![]);
    let t = render_text(&r, true);
    assert!(
        !t.contains("HEADROOM ALERT") && !t.contains(&styled_prefix(Tone::Red, "")),
        "{t}"
    );
    // Headroom is always below 100 % of the threshold.
    r.set_highlight_under(100.0);
    let plain = render_text(&r, false);
    holds(
        &plain,
        &[
            "\n!! HEADROOM ALERT: node headroom 99.9960% of watchdog_thresh (10 s) is below \
           100% (--highlight-under)\n",
        ],
    );
    assert!(!plain.contains('\x1b'), "{plain}");
    // The node's headroom turns red at the alert's threshold.
    let red = paint("99.996%", Tone::Red, true);
    holds(
        &render_text(&r, true),
        &[&styled_prefix(Tone::BoldRed, "!! HEADROOM ALERT"), &red],
    );
    // 0 %: never (headroom is never negative percent here).
    r.set_highlight_under(0.0);
    assert!(!render_text(&r, true).contains("HEADROOM ALERT"));
}

/// What crossterm writes before `text` in `tone`: the tone's escape sequence, then the text.
fn styled_prefix(tone: Tone, text: &str) -> String {
    let full = paint("\u{0}", tone, true);
    let cut = full.find('\u{0}').expect("the marker");
    format!("{}{text}", &full[..cut])
}

/// This CI host's probes: every family refused the same two ways, with the system's errors.
fn eperm_host_report() -> crate::report::Report {
    use crate::model::probe::{Probe, ProbeStatus, Style};
    const FENTRY: &str = "fentry: the kernel refused the program (EPERM: BPF trampolines not \
                          permitted here) [the BPF_PROG_LOAD syscall returned Operation not \
                          permitted (os error 1)]";
    const KPROBE: &str = "kprobe: this kernel has no kprobe PMU (built without CONFIG_KPROBES) \
                          [`/sys/bus/event_source/devices/kprobe/type`: No such file or \
                          directory (os error 2)]";
    let mut r = build_report(&header(), &agg(), 8_000_000_000, vec![]);
    let mut timer = ProbeStatus::attached(Style::Tracepoint, "hrtimer_expire_entry/exit");
    timer.reason = Some(format!("fell back: {FENTRY}; {KPROBE}"));
    r.probes.insert(Probe::PeriodTimer, timer);
    for p in [Probe::Distribute, Probe::Unthrottle] {
        r.probes
            .insert(p, ProbeStatus::not_attached(format!("{FENTRY}; {KPROBE}")));
    }
    r.probes.insert(
        Probe::Enqueue,
        ProbeStatus::not_attached(format!(
            "enqueue_entity is inlined in this kernel; enqueue_task_fair: {FENTRY}; {KPROBE}"
        )),
    );
    r
}

#[test]
fn repeated_probe_reasons_are_said_once_and_whole_with_v() {
    let r = eperm_host_report();
    let short = render_text_as(&r, false, Verbosity::Normal);
    holds(
        &short,
        &[
            "probes: period_timer tracepoint",
            "  period_timer: fell back: fentry [1]; kprobe [2]\n",
            // One line for the probes that share a reason.
            "  distribute, unthrottle unavailable: fentry [1]; kprobe [2]\n",
            "  enqueue unavailable: enqueue_entity is inlined in this kernel; \
             enqueue_task_fair: fentry [1]; kprobe [2]\n",
            "  [1] fentry: the kernel refused the program (EPERM: BPF trampolines not permitted here)\n",
            "  [2] kprobe: this kernel has no kprobe PMU (built without CONFIG_KPROBES)\n",
            "(-v: every probe, its target and reasons in full)",
        ],
    );
    assert_eq!(
        short.matches("EPERM").count(),
        1,
        "EPERM said once:\n{short}"
    );
    assert!(!short.contains("os error"), "details are -v's:\n{short}");

    let full = render_text_as(&r, false, Verbosity::Verbose);
    assert_eq!(full.matches("EPERM").count(), 4, "{full}");
    assert_eq!(full.matches("(os error 1)]").count(), 4, "{full}");
    assert!(!full.contains("[1]") && !full.contains("-v:"), "{full}");
    holds(
        &full,
        &[
            "  distribute       -  unavailable: fentry: the kernel refused the program \
           (EPERM: BPF trampolines not permitted here) [the BPF_PROG_LOAD syscall returned \
           Operation not permitted (os error 1)]; kprobe: this kernel has no kprobe PMU",
        ],
    );
    // Quiet is about stderr: the report itself is the normal one.
    assert_eq!(render_text_as(&r, false, Verbosity::Quiet), short);
}

#[test]
fn a_reason_no_other_probe_shares_gets_no_note() {
    let r = build_report(&header(), &agg(), 8_000_000_000, vec![]);
    let t = render_text_as(&r, false, Verbosity::Normal);
    assert!(!t.contains("  [1] "), "{t}");
    // -v: one line a probe, with its target.
    let full = render_text_as(&r, false, Verbosity::Verbose);
    assert!(
        full.contains("  period_timer     tracepoint hrtimer_expire_entry/exit\n"),
        "{full}"
    );
}

#[test]
fn clause_splitting_keeps_brackets_and_parentheses_whole() {
    let r = "fell back: a: x (b; c: d) [e; f]; g: h";
    assert_eq!(
        clauses(r).collect::<Vec<_>>(),
        ["fell back: a: x (b; c: d) [e; f]", "g: h"]
    );
    assert_eq!(
        tails("fell back: a: x (c: d)").collect::<Vec<_>>(),
        ["fell back: a: x (c: d)", "a: x (c: d)", "x (c: d)"]
    );
    assert_eq!(strip_details("a: x [e: f] y [g]"), "a: x y");
}

#[test]
fn quota_column_marks_an_ancestors_binding_quota() {
    let mut r = build_report(&header(), &agg(), 8_000_000_000, vec![]);
    let yarn = |r: &crate::report::Report| {
        r.cgroups
            .iter()
            .position(|c| c.id == 20)
            .expect("the YARN container")
    };
    let i = yarn(&r);
    let own = r.cgroups[i].binding_quota().expect("a quota");
    assert!(!own.ancestor, "{own:?}");
    let t = render_text(&r, false);
    let row = t
        .lines()
        .find(|l| l.starts_with("/yarn/container"))
        .expect("its row");
    let own_cell = format!("{}/{}", us_short(own.quota_us), us_short(own.period_us));
    assert!(row.contains(&format!(" {own_cell} ")), "{row}");
    assert!(!t.contains(QUOTA_LEGEND), "no mark, no legend:\n{t}");
    // /yarn tightened to 5 ms every 100 ms: its quota binds, marked, and the mark explained.
    if let Some(p) = r.cgroups[i].parents.as_mut().and_then(|p| p.first_mut()) {
        p.quota_us = Some(5_000);
    }
    let bound = r.cgroups[yarn(&r)].binding_quota();
    assert_eq!(
        bound,
        Some(crate::report::BindingQuota {
            quota_us: 5_000,
            period_us: 100_000,
            ancestor: true
        })
    );
    let t = render_text(&r, false);
    let row = t
        .lines()
        .find(|l| l.starts_with("/yarn/container"))
        .expect("its row");
    assert!(row.contains(" ^5ms/100ms "), "{row}");
    assert!(t.contains(QUOTA_LEGEND), "{t}");
}

#[test]
fn the_table_fits_80_columns_with_the_same_names() {
    let r = build_report(&header(), &agg(), 8_000_000_000, vec![]);
    let narrow = render_text_fit(&r, false, Verbosity::Normal, Some(80));
    let full = render_text_as(&r, false, Verbosity::Normal);
    let head = |t: &str| {
        t.lines()
            .find(|l| l.starts_with("CGROUP "))
            .map(str::to_string)
            .unwrap_or_else(|| panic!("no table in\n{t}"))
    };
    let (n, f) = (head(&narrow), head(&full));
    assert!(n.chars().count() <= 80, "{n}");
    for col in ["IRQOFF", "CB max", "QUOTA", "HEADROOM"] {
        assert!(n.contains(col) && f.contains(col), "{col}: {n}\n{f}");
    }
    let rows = narrow
        .lines()
        .skip_while(|l| !l.starts_with("CGROUP "))
        .take_while(|l| !l.is_empty());
    for l in rows {
        assert!(l.chars().count() <= 80, "{l}");
    }
    // `0/2` is two figures: the legend says which.
    assert!(
        f.contains("UNTHR/P") && full.contains(PER_PERIOD_LEGEND),
        "{full}"
    );
}

#[test]
fn shared_reasons_become_notes_for_doctor_too() {
    let fentry = "fentry: the kernel refused the program (EPERM: BPF trampolines not permitted \
                  here) [os error 1]";
    let a = format!("{fentry}; kprobe: none");
    let b = format!("enqueue_task_fair: {fentry}");
    let (said, notes) = shared_reason_notes(&[&a, &b, "alone"]);
    assert_eq!(
        said,
        [
            "fentry [1]; kprobe: none",
            "enqueue_task_fair: fentry [1]",
            "alone"
        ]
    );
    assert_eq!(
        notes,
        ["fentry: the kernel refused the program (EPERM: BPF trampolines not permitted here)"]
    );
}

#[test]
fn hostile_names_are_shown_escaped() {
    let r = crate::render::hostile::report();
    for color in [false, true] {
        for v in [Verbosity::Normal, Verbosity::Verbose] {
            for width in [None, Some(80)] {
                let t = render_text_fit(&r, color, v, width);
                crate::render::hostile::assert_escaped(&t);
            }
        }
    }
    let t = render_text_as(&r, false, Verbosity::Verbose);
    assert!(t.contains("\\x1b]0;pwned\\x07"), "{t}");
    assert!(t.contains("\\u{9b}31m\\t\\x7f"), "{t}");
}

#[test]
fn fixture_reports_are_unchanged_by_the_terminal_escape() {
    let r = build_report(&header(), &agg(), 8_000_000_000, vec![]);
    assert_eq!(crate::render::format::escaped(&r), r);
}

#[test]
fn a_report_that_does_not_round_trip_is_still_escaped() {
    let mut r = crate::render::hostile::report();
    // A NaN is JSON's null: the whole report no longer reads back.
    r.duration_s = f64::NAN;
    assert!(crate::model::escape::for_terminal(&r).is_err());
    let t = render_text_as(&r, true, Verbosity::Verbose);
    crate::render::hostile::assert_escaped(&t);
}
