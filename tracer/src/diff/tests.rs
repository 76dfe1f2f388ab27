//! The comparison on reports built from the report room's fixtures: matching, figures taken
//! from the reports' own typed fields, the noise rule and the verdicts.
use super::*;
use crate::analysis::Aggregator;
use crate::capture::{CaptureHeader, CgroupRecord};
use crate::report::build_report;
use crate::report::fixtures::{self, YARN, agg, header, irq_header, rec, span_agg};

fn report(h: &CaptureHeader, a: &Aggregator) -> Report {
    build_report(h, a, 8_000_000_000, vec![])
}

fn fig(figs: &[FigureDiff], n: FigureName) -> &FigureDiff {
    figs.iter().find(|f| f.figure == n).expect("figure present")
}

#[test]
fn the_same_report_twice_is_unchanged_everywhere() {
    let r = report(&irq_header(), &span_agg());
    let d = diff(&r, &r, ("a", "a"), DEFAULT_NOISE_PCT);
    assert_eq!(d.schema, "cfstrace.diff/1");
    assert!(d.node.same_host && d.node.same_kernel && d.node.same_ncpus);
    assert_eq!(d.node.verdict.verdict, VerdictKind::Unchanged);
    assert_eq!(d.node.verdict.figure, Some(FigureName::WorstSpan));
    assert_eq!(d.cgroups.len(), r.cgroups.len());
    for c in &d.cgroups {
        assert_eq!(c.matched_by, MatchBy::Path);
        assert_eq!(c.verdict.verdict, VerdictKind::Unchanged, "{c:?}");
        for f in c.figures.iter().filter(|f| f.before.is_some()) {
            assert_eq!(f.change, Some(0.0));
            assert_eq!(f.trend, Some(Trend::Unchanged));
        }
    }
    assert!(d.only_before.is_empty() && d.only_after.is_empty());
    assert!(!d.any_worse());
}

#[test]
fn figures_are_the_reports_own() {
    let b = report(&header(), &agg());
    let a = report(&irq_header(), &span_agg());
    let d = diff(&b, &a, ("b", "a"), DEFAULT_NOISE_PCT);
    let yarn = d
        .cgroups
        .iter()
        .find(|c| c.before.path.as_deref() == Some(YARN))
        .unwrap();
    let (cb, ca) = (
        b.cgroups.iter().find(|c| c.id == 20).unwrap(),
        a.cgroups.iter().find(|c| c.id == 20).unwrap(),
    );
    let f = fig(&yarn.figures, FigureName::CallbackP99);
    assert_eq!(f.before, Some(cb.callback_ns.p99 as f64));
    assert_eq!(f.after, Some(ca.callback_ns.p99 as f64));
    // Before: its worst callback (no spans traced); after: the 500 us span that ran it.
    let w = fig(&yarn.figures, FigureName::WorstSpan);
    assert_eq!(w.before, Some(310_000.0));
    assert_eq!(w.after, Some(500_000.0));
    assert_eq!(w.change, Some(190_000.0));
    assert!((w.change_pct.unwrap() - 190.0 * 100.0 / 310.0).abs() < 1e-9);
    assert_eq!(w.trend, Some(Trend::Worse));
    assert_eq!(yarn.verdict.verdict, VerdictKind::Worse);
    assert_eq!(yarn.verdict.figure, Some(FigureName::WorstSpan));
    assert_eq!(yarn.verdict.why, "worst span 310 us -> 500 us (+61%)");
    // Headroom moves with the worst span, in percentage points.
    let h = fig(&yarn.figures, FigureName::Headroom);
    assert_eq!(h.trend, Some(Trend::Worse));
    assert!((h.change.unwrap() - (-190_000.0 * 100.0 / 1e10)).abs() < 1e-12);
    // The node: worst IRQs-off 400 us (the unresolved callback) -> the 500 us span.
    let nw = fig(&d.node.figures, FigureName::WorstSpan);
    assert_eq!(
        nw.before,
        Some(b.worst_irqs_off.as_ref().unwrap().duration_ns as f64)
    );
    assert_eq!(nw.after, Some(500_000.0));
    assert_eq!(d.node.verdict.verdict, VerdictKind::Worse);
    assert_eq!(fig(&d.node.figures, FigureName::Lost).before, Some(2.0));
    assert!(d.any_worse());
}

#[test]
fn a_missing_figure_says_why() {
    let mut h = header();
    h.probes.insert(
        crate::model::probe::Probe::Unthrottle,
        crate::capture::ProbeStatus::not_attached("no kprobes"),
    );
    let mut a = Aggregator::new();
    a.add_cgroup(fixtures::yarn_record());
    for i in 0..10u64 {
        let mut p = rec(20, 1, i * 100_000_000, 100_000, 0);
        p.flags &= !tracer_ebpf::HOW_UNTHROTTLE;
        a.add_period(&p);
    }
    let without = report(&h, &a);
    let with = report(&header(), &agg());
    let d = diff(&with, &without, ("b", "a"), DEFAULT_NOISE_PCT);
    let yarn = &d.cgroups[0];
    let u = fig(&yarn.figures, FigureName::UnthrottledMax);
    assert!(u.before.is_some());
    assert_eq!(u.after, None);
    assert_eq!(u.trend, None);
    let why = u.after_missing.as_deref().unwrap();
    assert!(why.starts_with("unthrottled unavailable"), "{why}");
    // The text says `-` and the reason, within 80 columns.
    let text = crate::render::diff::render_diff(&d, false);
    assert!(
        text.contains("unthrottled max after: unthrottled unavailable"),
        "{text}"
    );
    for l in text.lines() {
        assert!(l.chars().count() <= 80, "{l:?}");
    }
}

#[test]
fn noise_rule() {
    use FigureName::*;
    // Under 10 % of before: unchanged; at it: changed.
    assert_eq!(
        trend(CallbackMax, 100_000.0, 109_999.0, 10.0),
        Trend::Unchanged
    );
    assert_eq!(trend(CallbackMax, 100_000.0, 110_000.0, 10.0), Trend::Worse);
    assert_eq!(trend(CallbackMax, 100_000.0, 50_000.0, 10.0), Trend::Better);
    // Times: a floor of 1 us even with no relative noise.
    assert_eq!(trend(CallbackMax, 2_000.0, 2_900.0, 0.0), Trend::Unchanged);
    // Quantiles: within their resolution (1/128) even with no relative noise.
    assert_eq!(
        trend(CallbackP99, 1_000_000.0, 1_007_000.0, 0.0),
        Trend::Unchanged
    );
    assert_eq!(
        trend(CallbackMax, 1_000_000.0, 1_007_000.0, 0.0),
        Trend::Worse
    );
    // Counts from 0: one more is a change.
    assert_eq!(trend(Precursors, 0.0, 1.0, 10.0), Trend::Worse);
    assert_eq!(trend(Precursors, 0.0, 0.0, 10.0), Trend::Unchanged);
    // Headroom by its used part: 99.99 -> 99.98 % doubles the span.
    assert_eq!(trend(Headroom, 99.99, 99.98, 10.0), Trend::Worse);
    assert_eq!(trend(Headroom, 99.98, 99.99, 10.0), Trend::Better);
}

#[test]
fn the_first_changed_figure_decides_and_the_others_are_named() {
    let f = |n, b: f64, a: f64| FigureDiff::new(n, Ok(b), Ok(a), 10.0);
    let figs = vec![
        f(FigureName::WorstSpan, 1_000_000.0, 300_000.0),
        f(FigureName::Precursors, 0.0, 0.0),
        f(FigureName::CallbackMax, 100_000.0, 100_500.0),
        f(FigureName::CallbackP50, 10_000.0, 20_000.0),
    ];
    let v = Verdict::of(&figs);
    assert_eq!(v.verdict, VerdictKind::Better);
    assert_eq!(v.figure, Some(FigureName::WorstSpan));
    assert_eq!(
        v.why,
        "worst span 1.00 ms -> 300 us (-70%); but worse: callback p50"
    );
    // Nothing on both sides: not comparable, saying why.
    let none = vec![FigureDiff::new(
        FigureName::WorstSpan,
        Err("no period-timer callback was seen".into()),
        Ok(1.0),
        10.0,
    )];
    let v = Verdict::of(&none);
    assert_eq!(v.verdict, VerdictKind::NotComparable);
    assert!(v.why.contains("no period-timer callback"), "{}", v.why);
}

fn named(id: u64, path: &str) -> CgroupRecord {
    let mut r = fixtures::other_record();
    r.facts.id = id;
    r.facts.path = Some(path.into());
    r.facts.workload = crate::model::workload::classify(path);
    r
}

fn report_of(cgroups: &[CgroupRecord]) -> Report {
    let mut a = Aggregator::new();
    for (i, c) in cgroups.iter().enumerate() {
        a.add_cgroup(c.clone());
        a.add_period(&rec(c.facts.id, 1, i as u64 * 1_000, 10_000, 1));
    }
    report(&header(), &a)
}

#[test]
fn cgroups_match_by_path_then_identity_never_by_guess() {
    let id_a = "a".repeat(64);
    let id_b = "b".repeat(64);
    let mut restarted_b = named(2, &format!("/docker/{id_a}"));
    restarted_b.facts.workload.name = Some("web".into());
    let mut restarted_a = named(12, &format!("/docker/{id_b}"));
    restarted_a.facts.workload.name = Some("web".into());
    let before = report_of(&[
        named(1, "/system.slice/cron.service"),
        restarted_b,
        named(3, "/yarn/container_e06_1512098667219_988894_01_000020"),
        // Two containers of one application on each side: ambiguous, never paired.
        named(4, "/yarn/container_1512098667219_5_01_000001"),
        named(5, "/yarn/container_1512098667219_5_01_000002"),
        named(6, "/gone"),
    ]);
    let after = report_of(&[
        named(11, "/system.slice/cron.service"),
        restarted_a,
        named(13, "/yarn/container_e06_1512098667219_988894_01_000031"),
        named(14, "/yarn/container_1512098667219_5_02_000001"),
        named(15, "/yarn/container_1512098667219_5_02_000002"),
        named(16, "/new"),
    ]);
    let m = match_cgroups(&before.cgroups, &after.cgroups);
    let by = |bid: u64| {
        m.pairs
            .iter()
            .find(|(i, _, _)| before.cgroups[*i].id == bid)
            .map(|(_, j, by)| (after.cgroups[*j].id, *by))
    };
    assert_eq!(by(1), Some((11, MatchBy::Path)));
    assert_eq!(by(2), Some((12, MatchBy::ContainerName)));
    assert_eq!(by(3), Some((13, MatchBy::YarnApplication)));
    assert_eq!(by(4), None);
    assert_eq!(by(6), None);
    let only = |side: &Report, idx: &[usize]| -> Vec<u64> {
        let mut v: Vec<u64> = idx.iter().map(|i| side.cgroups[*i].id).collect();
        v.sort();
        v
    };
    assert_eq!(only(&before, &m.only_before), vec![4, 5, 6]);
    assert_eq!(only(&after, &m.only_after), vec![14, 15, 16]);
}

#[test]
fn text_fits_80_columns_and_json_has_the_schema() {
    let b = report(&header(), &agg());
    let a = report(&irq_header(), &span_agg());
    let d = diff(
        &b,
        &a,
        ("/very/long/path/to/before-capture.jsonl", "after.jsonl"),
        10.0,
    );
    let text = crate::render::diff::render_diff(&d, false);
    for l in text.lines() {
        assert!(l.chars().count() <= 80, "{l:?}\n{text}");
    }
    assert!(text.contains("NODE: worse: worst span"), "{text}");
    assert!(
        text.contains(&format!("CGROUP {YARN}\n  worse: worst span")),
        "{text}"
    );
    assert!(text.contains("matched by path"), "{text}");
    let v = serde_json::to_value(&d).unwrap();
    assert_eq!(v["schema"], "cfstrace.diff/1");
    assert_eq!(v["node"]["verdict"]["verdict"], "worse");
    assert_eq!(v["node"]["verdict"]["figure"], "worst_span");
    assert_eq!(v["cgroups"][0]["matched_by"], "path");
    assert_eq!(v["node"]["figures"][0]["figure"], "worst_span");
    assert_eq!(v["node"]["figures"][0]["unit"], "ns");
}
