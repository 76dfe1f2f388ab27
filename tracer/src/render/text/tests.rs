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

/// `t` holds every one of `want`.
fn holds(t: &str, want: &[&str]) {
    for w in want {
        assert!(t.contains(w), "{w:?} is not in\n{t}");
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
            "  period_timer     tracepoint hrtimer_expire_entry/exit\n",
            "  enqueue          -  unavailable: kprobes are not available",
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
            "  ASYNC  HEADROOM",
            "async unthrottle (CSD, IRQs off) by CPU: 10 CSDs:  cpu2 15.0 us / 5 (max 3.01 us)  \
             cpu1 ",
            "  async_unthrottle tracepoint csd_function_entry/exit",
        ],
    );
    // A CSD longer than any callback: the node's headroom is the CSD's.
    let big = table(async_header(), long_csd_agg());
    holds(&big, &["(worst async-unthrottle CSD 450 us on cpu5)"]);
    let spans = table(irq_header(), span_agg());
    holds(
        &spans,
        &[
            "node headroom 9.9995 s (worst timer interrupt 500 us on cpu3: 2 period timers \
             took 312 us)",
            "  cpu3 500 us p50 500 us 2.0/span 62%",
            "  irq_span         tracepoint local_timer_entry/exit",
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
    // The node and per-cgroup headroom cells turn red at the same threshold.
    let red = paint("9.9996 s", Tone::Red, true);
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
            "  period_timer     tracepoint hrtimer_expire_entry/exit  (fell back: fentry [1]; kprobe [2])\n",
            "  distribute       -  unavailable: fentry [1]; kprobe [2]\n",
            "  unthrottle       -  unavailable: fentry [1]; kprobe [2]\n",
            "  enqueue          -  unavailable: enqueue_entity is inlined in this kernel; \
             enqueue_task_fair: fentry [1]; kprobe [2]\n",
            "  [1] fentry: the kernel refused the program (EPERM: BPF trampolines not permitted here)\n",
            "  [2] kprobe: this kernel has no kprobe PMU (built without CONFIG_KPROBES)\n",
            "(-v: every probe's reasons in full)",
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
    assert_eq!(t, render_text_as(&r, false, Verbosity::Verbose));
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
