//! The co-firing storm, on fixtures built from the spans a run could have.

use super::*;

/// One span of a co-firing fixture: (cpu, ts_ns, duration_ns, [(cgroup id, callback ns)]).
type FixtureSpan = (u32, u64, u64, Vec<(u64, u64)>);

/// A co-firing run's report and capture digest, consistent with each other and with the
/// report's own arithmetic, built from its spans (cgroup ids 1..=n are `/cofire/c<id>`).
fn cofire_run(spans: &[FixtureSpan]) -> (Value, CaptureDigest) {
    use serde_json::json;
    let mut capture = String::from("{\"schema\":\"cfstrace.capture/1\"}\n");
    for (cpu, ts, dur, cbs) in spans {
        for (i, (id, ns)) in cbs.iter().enumerate() {
            let line = json!({"kind": "period", "ts_ns": ts + 1 + i as u64, "cpu": cpu,
                              "duration_ns": ns, "cgroup_id": id, "span_ts_ns": ts});
            capture.push_str(&format!("{line}\n"));
        }
        let timers_ns: u64 = cbs.iter().map(|c| c.1).sum();
        let line = json!({"kind": "irq_span", "ts_ns": ts, "cpu": cpu, "duration_ns": dur,
                          "timers": cbs.len(), "timers_ns": timers_ns, "flags": 4});
        capture.push_str(&format!("{line}\n"));
    }
    let d = CaptureDigest::from_capture(&capture);
    let t = T as u64;
    let span_json = |s: &FixtureSpan| {
        json!({"cpu": s.0, "ts_ns": s.1, "duration_ns": s.2, "timers": s.3.len(),
               "timers_ns": s.3.iter().map(|c| c.1).sum::<u64>(), "flags": 4})
    };
    let longest = |it: &mut dyn Iterator<Item = &FixtureSpan>| -> Option<FixtureSpan> {
        let mut best: Option<&FixtureSpan> = None;
        for s in it {
            if best.is_none_or(|b| s.2 > b.2) {
                best = Some(s);
            }
        }
        best.cloned()
    };
    let mut cpus = Vec::new();
    let ncpu = spans.iter().map(|s| s.0).max().unwrap_or(0) + 1;
    for cpu in 0..ncpu {
        let mine: Vec<&FixtureSpan> = spans.iter().filter(|s| s.0 == cpu).collect();
        let Some(w) = longest(&mut mine.iter().copied()) else {
            cpus.push(json!({"cpu": cpu, "period_timers": 0, "irq_spans": 0}));
            continue;
        };
        let timers: Vec<u64> = mine.iter().map(|s| s.3.len() as u64).collect();
        let max_cb = mine.iter().flat_map(|s| s.3.iter().map(|c| c.1)).max();
        cpus.push(json!({
            "cpu": cpu, "period_timers": timers.iter().sum::<u64>(),
            "max_callback_ns": max_cb, "irq_spans": mine.len(),
            "irq_span_ns": {"count": mine.len(), "max": w.2},
            "max_irq_span_ns": w.2, "worst_irq_span": span_json(&w),
            "period_timers_per_span": {"count": mine.len(), "min": timers.iter().min(),
                                       "max": timers.iter().max()},
            "headroom_ns": t - w.2, "headroom_basis": BASIS_SPAN
        }));
    }
    let node = longest(&mut spans.iter()).expect("a span");
    let mut cgroups = Vec::new();
    for (&id, &n) in &d.per_cgroup {
        let holds = |s: &&FixtureSpan| s.3.iter().any(|c| c.0 == id);
        let w = longest(&mut spans.iter().filter(holds)).expect("its span");
        let own: Vec<u64> = w.3.iter().filter(|c| c.0 == id).map(|c| c.1).collect();
        let cb_max = spans
            .iter()
            .flat_map(|s| s.3.iter().filter(|c| c.0 == id).map(|c| c.1))
            .max();
        cgroups.push(json!({
            "id": id, "path": format!("/cofire/c{id}"), "periods": n,
            "callback_ns": {"count": n, "max": cb_max},
            "worst_irq_span": {"cpu": w.0, "ts_ns": w.1, "duration_ns": w.2,
                               "period_timers": w.3.len(),
                               "period_timers_ns": w.3.iter().map(|c| c.1).sum::<u64>(),
                               "own_timers": own.len(), "own_ns": own.iter().sum::<u64>()},
            "headroom_ns": t - w.2, "headroom_basis": BASIS_SPAN
        }));
    }
    let base = report();
    let r = json!({
        "schema": "cfstrace.report/1",
        "backend": "fentry",
        "backend_requested": "auto",
        "ncpus": 2,
        "watchdog": {"thresh_s": 10},
        "probes": base["probes"],
        "figures": base["figures"],
        "events": {"periods": d.periods(), "periods_in_span": d.periods_in_span(),
                   "irq_spans": spans.len(), "lost": 0},
        "cpus": cpus,
        "headroom_ns": t - node.2,
        "headroom_basis": BASIS_SPAN,
        "worst_irqs_off": {"basis": BASIS_SPAN, "cpu": node.0, "duration_ns": node.2,
                           "period_timers": node.3.len(),
                           "period_timers_ns": node.3.iter().map(|c| c.1).sum::<u64>()},
        "cgroups": cgroups,
        "culprit": Value::Null
    });
    (r, d)
}

/// A 6.4+ kernel (period timers interleaved).
const INTERLEAVED: &str = "6.12.57+deb13-cloud-amd64";

/// `check_cofire` of `cgroups` cgroups under `/cofire/` on an [`INTERLEAVED`] kernel.
fn check_interleaved(r: &Value, d: &CaptureDigest, cgroups: usize) -> Verdict {
    check_cofire(&with_release(INTERLEAVED), r, d, "cofire", cgroups)
}

/// Exactly these failures, in order, each named by a part of its message.
fn assert_fails_with(v: &Verdict, parts: &[&str]) {
    assert_eq!(v.failures.len(), parts.len(), "{:#?}", v.failures);
    for (f, part) in v.failures.iter().zip(parts) {
        assert!(f.contains(part), "want {part:?}: {:#?}", v.failures);
    }
}

/// The trixie run that failed by chance: cpu1's longest span (8.06 ms) held one timer of
/// 6 us, cpu0's longest one callback of 5.5 ms, and a shorter span held 13 timers of 13
/// cgroups.
fn stalled_longest_spans(most: u64) -> Vec<FixtureSpan> {
    vec![
        (1, 1_000_000, 8_060_000, vec![(1, 6_000)]),
        (0, 2_000_000, 5_600_000, vec![(2, 5_500_000)]),
        (
            0,
            300_000_000,
            400_000,
            (1..=most).map(|id| (id, 20_000 + id)).collect(),
        ),
        (1, 400_000_000, 90_000, vec![(3, 7_000), (4, 8_000)]),
    ]
}

#[test]
fn cofire_judged_by_what_spans_hold_not_by_the_longest() {
    let (r, d) = cofire_run(&stalled_longest_spans(13));
    // The fixture is what the tracer would report: consistent and matching its capture.
    assert_eq!(consistency(&r), Vec::<String>::new());
    assert!(check_capture(&r, &d).failures.is_empty());
    // The longest spans hold one timer each, as in the run that failed.
    for c in r["cpus"].as_array().unwrap() {
        assert_eq!(c["worst_irq_span"]["timers"], 1, "{c}");
    }
    for rel in [INTERLEAVED, "6.1.0-50-cloud-amd64"] {
        let v = check_cofire(&with_release(rel), &r, &d, "cofire", 13);
        assert!(v.failures.is_empty(), "{rel}: {:#?}", v.failures);
        assert!(
            v.notes.iter().any(|n| n.contains("up to 13 (13 cgroups)")
                && n.contains("the longest (8.06 ms on cpu1) held 1")),
            "{rel}: {:#?}",
            v.notes
        );
    }
    // Before 6.4 the floor is 10: a fullest span of 9 timers is not co-firing there, but
    // is on 6.4+ (floor 2).
    let (r, d) = cofire_run(&stalled_longest_spans(9));
    let v = check_cofire(&with_release("6.1.0-50-cloud-amd64"), &r, &d, "cofire", 9);
    assert_eq!(v.failures.len(), 2, "{:#?}", v.failures);
    let v = check_interleaved(&r, &d, 9);
    assert!(v.failures.is_empty(), "{:#?}", v.failures);
}

#[test]
fn cofire_without_a_shared_span_fails() {
    // Every timer alone in its interrupt: what a tracer that splits spans would show.
    let spans: Vec<FixtureSpan> = (1..=13u64)
        .map(|id| {
            (
                (id % 2) as u32,
                id * 1_000_000,
                50_000 + id,
                vec![(id, 6_000)],
            )
        })
        .collect();
    let (r, d) = cofire_run(&spans);
    assert_eq!(consistency(&r), Vec::<String>::new());
    assert!(check_capture(&r, &d).failures.is_empty());
    let v = check_interleaved(&r, &d, 13);
    assert_fails_with(&v, &["did not share interrupts", "distinct cgroups"]);

    // A report that claims a shared span its capture does not have fails as well (and the
    // capture check names the disagreement).
    let mut r2 = r.clone();
    r2["cpus"][0]["period_timers_per_span"]["max"] = 13.into();
    let v = check_interleaved(&r2, &d, 13);
    assert!(
        v.failures
            .iter()
            .any(|f| f.contains("did not share interrupts"))
            && v.failures
                .iter()
                .any(|f| f.contains("period_timers_per_span.max is 13")),
        "{:#?}",
        v.failures
    );

    // Timers that shared spans, but spans whose callback lines name one cgroup (a lost
    // span stamp): the distinct-cgroups check fails.
    let (r, d) = cofire_run(&stalled_longest_spans(13));
    let mut d2 = d.clone();
    for (k, e) in d2.by_span.iter_mut() {
        if k.1 != 0 {
            e.2 = 1;
        }
    }
    let v = check_interleaved(&r, &d2, 13);
    assert_fails_with(&v, &["distinct cgroups"]);
}
