//! /metrics from fed capture lines, read back as text.

use super::*;
use crate::model::records::{CgroupFacts, IrqSpanRecord};

fn period(cg: u64, cpu: u32, dur: u64, unthrottled: u32) -> CaptureLine {
    CaptureLine::Period(PeriodRecord {
        ts_ns: 1,
        cpu,
        duration_ns: dur,
        cgroup_id: cg,
        quota_ns: u64::MAX,
        unthrottled,
        flags: tracer_ebpf::HOW_UNTHROTTLE,
        ..Default::default()
    })
}

fn named(id: u64, path: &str) -> CaptureLine {
    CaptureLine::Cgroup(Box::new(CgroupRecord {
        facts: CgroupFacts {
            id,
            path: Some(path.to_string()),
            workload: classify(path),
            processes: Vec::new(),
            period_us: None,
            quota_us: None,
        },
        note: None,
        parents: None,
    }))
}

fn empty_report() -> Report {
    let header = crate::model::records::test_header();
    crate::report::build_report(&header, &crate::analysis::Aggregator::new(), 0, vec![])
}

fn render_text(m: &Metrics) -> String {
    String::from_utf8(m.render().to_vec()).unwrap()
}

/// The metrics of one cgroup at `path` with these callback times (ns).
fn one_cgroup(path: &str, callbacks: &[u64]) -> Metrics {
    let mut m = Metrics::new(50, None);
    m.feed(&named(7, path));
    for &ns in callbacks {
        m.feed(&period(7, 0, ns, 0));
    }
    m.end_interval(&empty_report(), LossRecord::default());
    m
}

#[test]
fn label_values_are_escaped_exactly() {
    // A hostile path cannot close the label or start a new line.
    let t = render_text(&one_cgroup("/a\"} 1\nevil_metric{x=\"\\", &[1_000]));
    assert!(
        t.contains(r#"{cgroup="/a\"} 1\nevil_metric{x=\"\\",kind="cgroup","#),
        "{t}"
    );
    assert!(!t.contains("\nevil_metric"), "{t}");
    // Nothing else is escaped.
    let t = render_text(&one_cgroup("/plain/ü {}\t", &[1_000]));
    assert!(t.contains("{cgroup=\"/plain/ü {}\t\","), "{t}");
}

#[test]
fn buckets_come_from_the_histogram_cumulative_to_inf() {
    let layout = Layout::time();
    assert_eq!(layout.bounds.len(), 22);
    assert_eq!(layout.bounds[..3], [1_000, 2_500, 5_000]);
    assert_eq!(layout.bounds.last(), Some(&10_000_000_000));
    let m = one_cgroup("/c", &[500, 1_000, 1_010, 3_000_000, 20_000_000_000]);
    let t = render_text(&m);
    let bucket = |le: &str| {
        let key = format!("{{le=\"{le}\",");
        let line = t
            .lines()
            .find(|l| l.contains(&key) && l.starts_with("cfstrace_callback"));
        let line = line.unwrap_or_else(|| panic!("no le={le}:\n{t}"));
        line.rsplit_once(' ').unwrap().1.parse::<u64>().unwrap()
    };
    assert_eq!(bucket("0.000001"), 2, "le is inclusive");
    assert_eq!(bucket("0.0000025"), 3);
    assert_eq!(bucket("0.005"), 4);
    assert_eq!(bucket("10.0"), 4, "20 s is above every bound");
    assert_eq!(bucket("+Inf"), 5);
    let les: Vec<f64> = (t.lines())
        .filter(|l| l.starts_with("cfstrace_callback_seconds_bucket"))
        .map(|l| l.split("le=\"").nth(1).unwrap().split('"').next().unwrap())
        .map(|le| {
            if le == "+Inf" {
                f64::INFINITY
            } else {
                le.parse().unwrap()
            }
        })
        .collect();
    assert_eq!(les.len(), 23);
    assert!(les.windows(2).all(|w| w[0] < w[1]), "{les:?}");
    assert!(
        t.contains("cfstrace_callback_seconds_count{cgroup=\"/c\","),
        "{t}"
    );
    assert!(t.contains("} 5\n"), "{t}");
    // The exact sum, not the histogram's.
    assert!(t.contains("} 20.00300251\n"), "{t}");
    // Per-period counts: exact at the small values Prometheus users look at.
    let mut d = Distribution::counts();
    for v in [0, 3, 3, 5000] {
        d.record(v);
    }
    let counts = Layout::counts().sample(&Labels::one("x", ""), &d);
    let cumulative: Vec<u64> = (counts.buckets.iter())
        .scan(0, |acc, (_, n)| {
            *acc += n;
            Some(*acc)
        })
        .collect();
    assert_eq!(counts.buckets[0].0, 0.0);
    assert_eq!(cumulative[..4], [1, 1, 1, 3], "0, 1, 2, 4");
    assert_eq!(cumulative.last(), Some(&4));
    assert_eq!(cumulative[cumulative.len() - 2], 3, "5000 above 4096");
}

#[test]
fn openmetrics_text_ends_in_eof_with_counters_as_families() {
    let t = render_text(&one_cgroup("/c", &[1_000]));
    assert!(t.ends_with("# EOF\n"), "{t}");
    assert!(t.contains("# TYPE cfstrace_events counter\n"), "{t}");
    assert!(
        t.contains("cfstrace_events_total{kind=\"period_callback\"} 1\n"),
        "{t}"
    );
    assert!(
        t.contains("# TYPE cfstrace_callback_seconds histogram\n"),
        "{t}"
    );
    assert!(
        t.contains("cfstrace_lost_events_total{reason=\"ringbuf_full\"} 0\n"),
        "{t}"
    );
    assert!(
        t.contains("# TYPE cfstrace_unthrottled_per_period histogram\n"),
        "{t}"
    );
    // A kernel that cannot count unthrottled cfs_rqs: no such family at all.
    let mut m = Metrics::new(50, None);
    m.feed(&CaptureLine::Period(PeriodRecord {
        duration_ns: 1_000,
        cgroup_id: 7,
        ..Default::default()
    }));
    m.end_interval(&empty_report(), LossRecord::default());
    assert!(!render_text(&m).contains("unthrottled"));
}

#[test]
fn cardinality_is_bounded() {
    let mut m = Metrics::new(50, None);
    for id in 0..300u64 {
        m.feed(&named(id, &format!("/c{id}")));
        // Busier with the id: the 50 busiest are 250..300.
        m.feed(&period(id, 0, 1_000 + id, 0));
    }
    m.end_interval(&empty_report(), LossRecord::default());
    assert_eq!(m.cgroup_series(), 50);
    let t = render_text(&m);
    let series = (t.lines())
        .filter(|l| l.starts_with("cfstrace_callback_seconds_count{"))
        .count();
    assert_eq!(series, 51, "50 cgroups and other");
    assert!(t.contains("cgroup=\"/c250\"") && !t.contains("cgroup=\"/c249\""));
    assert!(t.contains("_count{cgroup=\"other\",kind=\"\",application=\"\",container=\"\",pod_uid=\"\",unit=\"\"} 250\n"), "{t}");
    // Later cgroups never get a series of their own.
    m.feed(&named(1000, "/late"));
    m.feed(&period(1000, 0, 9_000_000, 0));
    m.end_interval(&empty_report(), LossRecord::default());
    assert_eq!(m.cgroup_series(), 50);
    assert!(!render_text(&m).contains("/late"));
}

#[test]
fn folding_keeps_series_stable_and_monotone() {
    let mut m = Metrics::new(1, None);
    m.feed(&named(10, "/busy"));
    m.feed(&named(11, "/quiet"));
    m.feed(&period(10, 0, 50_000, 2));
    m.feed(&period(11, 1, 1_000, 1));
    m.end_interval(&empty_report(), LossRecord::default());
    assert_eq!(m.cgroup_series(), 1);
    let text = render_text(&m);
    assert!(text.contains("cgroup=\"/busy\""));
    assert!(!text.contains("cgroup=\"/quiet\""));
    assert!(text.contains(
        "cfstrace_callback_seconds_count{cgroup=\"other\",kind=\"\",application=\"\",container=\"\",pod_uid=\"\",unit=\"\"} 1"
    ));
    // /quiet gets busier than /busy later: still folded, `other` only grows.
    m.feed(&named(12, "/late"));
    for _ in 0..5 {
        m.feed(&period(11, 1, 9_000_000, 1));
        m.feed(&period(12, 2, 9_000_000, 1));
    }
    m.end_interval(&empty_report(), LossRecord::default());
    let text = render_text(&m);
    assert!(!text.contains("/quiet") && !text.contains("/late"));
    assert!(text.contains("cgroup=\"other\""));
    assert!(text.contains("_count{cgroup=\"other\",kind=\"\",application=\"\",container=\"\",pod_uid=\"\",unit=\"\"} 11"), "{text}");
    assert!(text.contains("cfstrace_events_total{kind=\"period_callback\"} 12"));
    assert!(text.contains("cfstrace_unthrottled_per_period_bucket"));
}

#[test]
fn filter_folds_non_matching_and_no_other_without_folding() {
    let mut m = Metrics::new(50, Some(Regex::new("kube").unwrap()));
    m.feed(&named(1, "/kubepods/pod1"));
    m.feed(&period(1, 0, 1_000, 0));
    m.end_interval(&empty_report(), LossRecord::default());
    assert!(!render_text(&m).contains("\"other\""));
    m.feed(&named(2, "/system.slice/x.service"));
    m.feed(&period(2, 0, 1_000, 0));
    m.end_interval(&empty_report(), LossRecord::default());
    let t = render_text(&m);
    assert!(t.contains("\"other\"") && !t.contains("x.service"), "{t}");
}

/// A callback of cgroup `cg` at `period_ns` taking `dur` ns, with `loops` passes counted.
fn timed(cg: u64, cpu: u32, dur: u64, period_ns: u64, loops: Option<u32>) -> CaptureLine {
    CaptureLine::Period(PeriodRecord {
        ts_ns: 1,
        cpu,
        duration_ns: dur,
        cgroup_id: cg,
        period_ns,
        quota_ns: period_ns / 2,
        loops: loops.unwrap_or(0),
        flags: tracer_ebpf::HOW_PERIOD | loops.map_or(0, |_| tracer_ebpf::HOW_LOOPS),
        ..Default::default()
    })
}

fn scaled(cpu: u32, period_us: u64, scaled_up: bool) -> CaptureLine {
    CaptureLine::KmsgPeriodScaling(PeriodScaling {
        ts_us: 1,
        cpu,
        scaled_up,
        period_us,
        quota_us: period_us / 2,
    })
}

/// The value of the one sample line that starts with `head`.
fn sample(t: &str, head: &str) -> Option<f64> {
    let mut lines = t.lines().filter(|l| l.starts_with(head));
    let line = lines.next()?;
    assert!(lines.next().is_none(), "two samples {head}:\n{t}");
    Some(line.rsplit_once(' ').unwrap().1.parse().unwrap())
}

const C_LABELS: &str =
    r#"{cgroup="/c",kind="cgroup",application="",container="",pod_uid="",unit="""#;

fn precursor(t: &str, labels: &str, p: &str) -> Option<f64> {
    sample(
        t,
        &format!("cfstrace_cgroup_precursors_total{labels},precursor=\"{p}\"}} "),
    )
}

#[test]
fn period_and_precursors_per_cgroup() {
    let mut m = Metrics::new(50, None);
    m.feed(&named(7, "/c"));
    // At 1 ms: one callback under its period, one at exactly its period (counted), one
    // of three passes; then the kernel's message and the doubled period.
    m.feed(&timed(7, 2, 999_999, 1_000_000, Some(1)));
    m.feed(&timed(7, 2, 1_000_000, 1_000_000, Some(1)));
    m.feed(&timed(7, 2, 5_000, 1_000_000, Some(3)));
    m.feed(&scaled(2, 2_000, true));
    // Could not scale (at the 1 s cap): changes nothing, not counted.
    m.feed(&scaled(2, 2_000, false));
    m.feed(&timed(7, 2, 5_000, 2_000_000, Some(1)));
    m.end_interval(&empty_report(), LossRecord::default());
    let t = render_text(&m);
    assert!(
        t.contains("# TYPE cfstrace_cgroup_period_seconds gauge\n"),
        "{t}"
    );
    assert!(
        t.contains("# TYPE cfstrace_cgroup_precursors counter\n"),
        "{t}"
    );
    let period = format!("cfstrace_cgroup_period_seconds{C_LABELS}}} ");
    assert_eq!(sample(&t, &period), Some(0.002), "{t}");
    assert_eq!(precursor(&t, C_LABELS, "over_period"), Some(1.0), "{t}");
    assert_eq!(precursor(&t, C_LABELS, "multi_pass"), Some(1.0), "{t}");
    assert_eq!(precursor(&t, C_LABELS, "period_changed"), Some(1.0), "{t}");
    assert_eq!(precursor(&t, C_LABELS, "period_scaled"), Some(1.0), "{t}");

    // A message for a timer on another CPU, and one no timer shows yet: neither is this
    // cgroup's; the second is given to it once its period shows, an interval later.
    m.feed(&scaled(5, 4_000, true));
    m.feed(&scaled(2, 4_000, true));
    m.end_interval(&empty_report(), LossRecord::default());
    assert_eq!(
        precursor(&render_text(&m), C_LABELS, "period_scaled"),
        Some(1.0)
    );
    m.feed(&timed(7, 2, 5_000, 4_000_000, Some(1)));
    m.end_interval(&empty_report(), LossRecord::default());
    let t = render_text(&m);
    assert_eq!(precursor(&t, C_LABELS, "period_scaled"), Some(2.0), "{t}");
    assert_eq!(precursor(&t, C_LABELS, "period_changed"), Some(2.0), "{t}");
    assert_eq!(sample(&t, &period), Some(0.004), "{t}");
    // The message from CPU 5 was dropped after its tries, never counted anywhere.
    for _ in 0..KMSG_TRIES {
        m.end_interval(&empty_report(), LossRecord::default());
    }
    assert!(m.kmsgs.is_empty());

    // Lost callbacks' precursors come from the kernel's cumulative sums: deltas added.
    let unsent = |over: u64, multi: u64| {
        let mut u = UnsentPeriodsRecord {
            id: 7,
            ..Default::default()
        };
        u.sums.over_period = over;
        u.sums.multi_pass = multi;
        u.sums.max_loops = 3;
        CaptureLine::UnsentPeriods(u)
    };
    m.feed(&unsent(2, 1));
    m.feed(&unsent(5, 1));
    m.end_interval(&empty_report(), LossRecord::default());
    let t = render_text(&m);
    assert_eq!(precursor(&t, C_LABELS, "over_period"), Some(6.0), "{t}");
    assert_eq!(precursor(&t, C_LABELS, "multi_pass"), Some(2.0), "{t}");
}

#[test]
fn precursors_without_loops_and_in_other() {
    // No pass count from this kernel: no multi_pass sample, the other three at 0.
    let t = render_text(&one_cgroup("/c", &[1_000]));
    assert_eq!(precursor(&t, C_LABELS, "over_period"), Some(0.0), "{t}");
    assert_eq!(precursor(&t, C_LABELS, "period_scaled"), Some(0.0), "{t}");
    assert_eq!(precursor(&t, C_LABELS, "multi_pass"), None, "{t}");
    // Nor a period: the callbacks carried none.
    assert!(!t.contains("cfstrace_cgroup_period_seconds"), "{t}");

    // Beyond --max-cgroups: counted in `other`, which has no one period.
    let mut m = Metrics::new(1, None);
    m.feed(&named(1, "/busy"));
    m.feed(&named(2, "/c"));
    m.feed(&timed(1, 0, 900_000, 1_000_000, None));
    m.feed(&timed(2, 1, 100_000, 100_000, None));
    m.end_interval(&empty_report(), LossRecord::default());
    m.feed(&timed(2, 1, 200_000, 100_000, None));
    m.feed(&timed(2, 1, 200_000, 200_000, None));
    m.feed(&scaled(0, 1_000, true));
    m.end_interval(&empty_report(), LossRecord::default());
    let t = render_text(&m);
    let other = r#"{cgroup="other",kind="",application="",container="",pod_uid="",unit="""#;
    assert_eq!(precursor(&t, other, "over_period"), Some(3.0), "{t}");
    assert_eq!(precursor(&t, other, "period_changed"), Some(1.0), "{t}");
    let busy = r#"{cgroup="/busy",kind="cgroup",application="",container="",pod_uid="",unit="""#;
    assert_eq!(precursor(&t, busy, "over_period"), Some(0.0), "{t}");
    assert_eq!(precursor(&t, busy, "period_scaled"), Some(1.0), "{t}");
    let periods: Vec<&str> = (t.lines())
        .filter(|l| l.starts_with("cfstrace_cgroup_period_seconds{"))
        .collect();
    assert_eq!(
        periods,
        [format!("cfstrace_cgroup_period_seconds{busy}}} 0.001")]
    );
}

#[test]
fn hostile_path_renders_one_series_per_line() {
    let mut m = Metrics::new(50, None);
    let evil = "/ev\"il\\na\nme} 1\n";
    m.feed(&named(7, evil));
    m.feed(&period(7, 0, 1_000, 0));
    m.feed(&CaptureLine::IrqSpan(IrqSpanRecord {
        cpu: 3,
        duration_ns: 2_000,
        ..Default::default()
    }));
    m.end_interval(&empty_report(), LossRecord::default());
    let t = render_text(&m);
    for line in t.lines().filter(|l| !l.starts_with('#')) {
        // name{labels} value: the value is the last field and parses.
        let (_, v) = line.rsplit_once(' ').unwrap();
        assert!(v.parse::<f64>().is_ok() || v == "+Inf", "{line}");
    }
    assert!(t.contains(r#"cgroup="/ev\"il\\na\nme} 1\n""#), "{t}");
    assert!(t.contains("cfstrace_irq_span_seconds_count{cpu=\"3\"} 1"));
    assert!(t.ends_with("# EOF\n"));
}

#[test]
fn churn_keeps_every_per_id_map_bounded() {
    use crate::model::bounded::MAX_TRACKED;
    // Every id new, named and calling back once, past the cap; ten slots, the rest folded.
    let ids = MAX_TRACKED as u64 + 5_000;
    let mut m = Metrics::new(10, None);
    for id in 1..=ids {
        m.feed(&named(id, &format!("/churn/cg{id}")));
        m.feed(&period(id, 0, 1_000, 1));
        if id % 10_000 == 0 {
            m.end_interval(&empty_report(), LossRecord::default());
        }
    }
    m.end_interval(&empty_report(), LossRecord::default());
    for (what, len) in [
        ("records", m.records.len()),
        ("keys", m.keys.len()),
        ("timers", m.timers.len()),
        ("folded", m.folded.len()),
    ] {
        assert!(len <= MAX_TRACKED, "{what}: {len}");
    }
    assert!(m.records.evicted() > 0, "the churn never reached the cap");
    assert!(m.pending.is_empty());
    assert_eq!(m.slots.len(), 10);
    // Every callback still counted: ten series and `other` hold them all.
    let t = render_text(&m);
    assert!(t.contains(&format!(
        "cfstrace_events_total{{kind=\"period_callback\"}} {ids}\n"
    )));
    let counted: u64 = t
        .lines()
        .filter(|l| l.starts_with("cfstrace_callback_seconds_count{"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
        .sum();
    assert_eq!(counted, ids, "callbacks over the series and `other`");
}
