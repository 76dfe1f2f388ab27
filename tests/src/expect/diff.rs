//! `cfstrace diff`'s `cfstrace.diff/1` document, judged without the tracer's types:
//!
//! - [`check_diff_against_reports`]: every figure of the node and of each cgroup pair is the
//!   two reports' own (`cfstrace report --json` of each capture), and the noise rule and the
//!   verdicts follow from those figures as the README says ([`check_diff`]);
//! - [`check_diff`]: the document on its own: changes are after - before, trends follow the
//!   noise rule, each verdict is the first judged figure that changed;
//! - [`check_worst_span_fell`]: the VM's period comparison: the node's worst span fell and
//!   the node's verdict says better.

use serde_json::Value;

use super::{Verdict, at, list, num, show, text};

/// The verdict's order (README, `diff`): the first of these that changed decides.
pub const VERDICT_ORDER: [&str; 5] = [
    "worst_span",
    "precursors",
    "callback_max",
    "callback_p99",
    "callback_p50",
];

/// The noise rule, written from the README: unchanged when |after - before| is under the
/// larger of noise % of before, the quantile resolution (1/128 of callback-time quantiles,
/// 1/16 of per-period count quantiles) of the larger value, and the floor (1 us, 1 count);
/// headroom is judged by its used part (100 - pct), with no floor.
pub fn expected_trend(figure: &str, before: f64, after: f64, noise_pct: f64) -> &'static str {
    let (b, a) = if figure == "headroom" {
        (100.0 - before, 100.0 - after)
    } else {
        (before, after)
    };
    let resolution = match figure {
        "callback_p50" | "callback_p99" => 1.0 / 128.0,
        "unthrottled_p50" => 1.0 / 16.0,
        _ => 0.0,
    };
    let floor = match figure {
        "headroom" => 0.0,
        "worst_span" | "callback_p50" | "callback_p99" | "callback_max" => 1_000.0,
        _ => 1.0,
    };
    let threshold = (noise_pct / 100.0 * b.abs())
        .max(resolution * b.abs().max(a.abs()))
        .max(floor);
    let d = a - b;
    if d == 0.0 || d.abs() < threshold {
        "unchanged"
    } else if d < 0.0 {
        "better"
    } else {
        "worse"
    }
}

fn figure<'a>(figures: &'a [Value], name: &str) -> Option<&'a Value> {
    figures.iter().find(|f| f["figure"] == name)
}

/// One block's figures (the node's or a cgroup pair's) and its verdict.
fn check_block(v: &mut Verdict, who: &str, block: &Value, noise: f64) {
    let figures = list(block, "/figures");
    v.need(!figures.is_empty(), || format!("{who}: no figures"));
    for f in figures {
        let name = text(f, "/figure").unwrap_or("?");
        let (b, a) = (num(f, "/before"), num(f, "/after"));
        match (b, a) {
            (Some(b), Some(a)) => {
                let change = num(f, "/change");
                v.need(
                    change.is_some_and(|c| (c - (a - b)).abs() <= 1e-9 * b.abs().max(1.0)),
                    || {
                        format!(
                            "{who} {name}: change {} is not {a} - {b}",
                            show(at(f, "/change"))
                        )
                    },
                );
                let want = expected_trend(name, b, a, noise);
                v.need(text(f, "/trend") == Some(want), || {
                    format!("{who} {name}: trend {} but the noise rule says {want} ({b} -> {a}, noise {noise}%)", show(at(f, "/trend")))
                });
                if b != 0.0 {
                    let want = (a - b) * 100.0 / b.abs();
                    v.need(
                        num(f, "/change_pct")
                            .is_some_and(|p| (p - want).abs() < 1e-6 * want.abs().max(1.0)),
                        || {
                            format!(
                                "{who} {name}: change_pct {} is not {want}",
                                show(at(f, "/change_pct"))
                            )
                        },
                    );
                }
            }
            _ => {
                // A side without a value says why, and nothing is made up from it.
                for (side, val) in [("before", b), ("after", a)] {
                    v.need(
                        val.is_some()
                            || text(f, &format!("/{side}_missing")).is_some_and(|s| !s.is_empty()),
                        || format!("{who} {name}: no {side} value and no reason"),
                    );
                }
                v.need(
                    at(f, "/trend").is_none() && at(f, "/change").is_none(),
                    || format!("{who} {name}: a trend or change without both sides: {f}"),
                );
            }
        }
        let judged = VERDICT_ORDER.contains(&name);
        v.need(f["judged"] == judged, || {
            format!("{who} {name}: judged should be {judged}")
        });
    }
    // The verdict: the first judged figure that changed decides.
    let judged: Vec<&Value> = VERDICT_ORDER
        .iter()
        .filter_map(|n| figure(figures, n))
        .collect();
    let decided = judged
        .iter()
        .find(|f| matches!(text(f, "/trend"), Some("better" | "worse")));
    let (want, by) = match decided {
        Some(f) => (text(f, "/trend").unwrap_or("?"), text(f, "/figure")),
        None => match judged.iter().find(|f| at(f, "/trend").is_some()) {
            Some(f) => ("unchanged", text(f, "/figure")),
            None => ("not_comparable", None),
        },
    };
    v.need(text(block, "/verdict/verdict") == Some(want), || {
        format!(
            "{who}: verdict {} but its figures say {want}",
            show(at(block, "/verdict/verdict"))
        )
    });
    v.need(text(block, "/verdict/figure") == by, || {
        format!(
            "{who}: deciding figure {} but its figures say {by:?}",
            show(at(block, "/verdict/figure"))
        )
    });
    v.need(
        text(block, "/verdict/why").is_some_and(|s| !s.is_empty()),
        || format!("{who}: a verdict without a why"),
    );
}

/// The document on its own (module docs).
pub fn check_diff(d: &Value) -> Verdict {
    let mut v = Verdict::default();
    v.need(d["schema"] == "cfstrace.diff/1", || {
        format!("schema {} is not cfstrace.diff/1", show(at(d, "/schema")))
    });
    let noise = num(d, "/noise_pct").unwrap_or(f64::NAN);
    v.need(noise.is_finite(), || "no noise_pct".into());
    check_block(&mut v, "node", &d["node"], noise);
    for c in list(d, "/cgroups") {
        let who = format!("cgroup {}", text(c, "/before/name").unwrap_or("?"));
        v.need(text(c, "/matched_by").is_some(), || {
            format!("{who}: no matched_by")
        });
        check_block(&mut v, &who, c, noise);
    }
    v
}

/// The worst IRQs-off time a report's cgroup was part of: its headroom span where its
/// headroom is measured from one, else its worst callback (README, report keys).
fn cgroup_worst_span(c: &Value) -> Option<f64> {
    if c["headroom_basis"] == "irq_span" {
        num(c, "/worst_irq_span/duration_ns")
    } else {
        num(c, "/callback_ns/max")
    }
}

fn headroom_pct(r: &Value, h: Option<f64>) -> Option<f64> {
    let t = num(r, "/watchdog/thresh_s").filter(|t| *t > 0.0)?;
    Some(h? * 100.0 / (t * 1e9))
}

/// `want` against the diff's figure `name` on `side` (`before`/`after`), equal within a
/// float's rounding; None wants a missing value.
fn same(v: &mut Verdict, who: &str, block: &Value, name: &str, side: &str, want: Option<f64>) {
    let got = figure(list(block, "/figures"), name).and_then(|f| num(f, &format!("/{side}")));
    let ok = match (got, want) {
        (Some(g), Some(w)) => (g - w).abs() <= 1e-9 * w.abs().max(1.0),
        (None, None) => true,
        _ => false,
    };
    v.need(ok, || {
        format!("{who} {name} {side}: the diff says {got:?}, the report {want:?}")
    });
}

/// Every figure is the reports' own, and the document holds together ([`check_diff`]).
pub fn check_diff_against_reports(d: &Value, before: &Value, after: &Value) -> Verdict {
    let mut v = check_diff(d);
    for (side, r) in [("before", before), ("after", after)] {
        v.need(
            d[side]["kernel"] == r["kernel"] && d[side]["ncpus"] == r["ncpus"],
            || format!("{side}: kernel/ncpus are not the report's"),
        );
        v.need(
            d[side]["periods"] == r["events"]["periods"] && d[side]["lost"] == r["events"]["lost"],
            || format!("{side}: periods/lost are not the report's"),
        );
        let node = &d["node"];
        same(
            &mut v,
            "node",
            node,
            "worst_span",
            side,
            num(r, "/worst_irqs_off/duration_ns"),
        );
        same(
            &mut v,
            "node",
            node,
            "headroom",
            side,
            headroom_pct(r, num(r, "/headroom_ns")),
        );
        let cb_max = list(r, "/cgroups")
            .iter()
            .filter_map(|c| num(c, "/callback_ns/max"))
            .fold(None, |m: Option<f64>, x| Some(m.map_or(x, |m| m.max(x))));
        same(&mut v, "node", node, "callback_max", side, cb_max);
        same(&mut v, "node", node, "lost", side, num(r, "/events/lost"));
        let precursors = at(r, "/precursors").map(|p| {
            num(p, "/period_changes").unwrap_or(0.0)
                + num(p, "/callbacks_over_period").unwrap_or(0.0)
                + num(p, "/multi_pass_callbacks").unwrap_or(0.0)
        });
        same(&mut v, "node", node, "precursors", side, precursors);
    }
    v.need(
        d["node"]["same_kernel"] == (before["kernel"] == after["kernel"]),
        || "node same_kernel is not the reports'".into(),
    );
    // Each pair: its two cgroups, found in the reports by id, and their figures.
    let find = |r: &Value, id: Option<u64>| {
        list(r, "/cgroups")
            .iter()
            .find(|c| c["id"].as_u64() == id)
            .cloned()
    };
    let mut paired_b = Vec::new();
    let mut paired_a = Vec::new();
    for c in list(d, "/cgroups") {
        let who = format!("cgroup {}", text(c, "/before/name").unwrap_or("?"));
        let (ib, ia) = (c["before"]["id"].as_u64(), c["after"]["id"].as_u64());
        paired_b.extend(ib);
        paired_a.extend(ia);
        let (Some(cb), Some(ca)) = (find(before, ib), find(after, ia)) else {
            v.need(false, || format!("{who}: not in both reports"));
            continue;
        };
        if c["matched_by"] == "path" {
            v.need(cb["path"] == ca["path"], || {
                format!("{who}: matched by path, paths differ")
            });
        }
        for (side, r, x) in [("before", before, &cb), ("after", after, &ca)] {
            same(&mut v, &who, c, "worst_span", side, cgroup_worst_span(x));
            same(
                &mut v,
                &who,
                c,
                "headroom",
                side,
                headroom_pct(r, num(x, "/headroom_ns")),
            );
            for (name, ptr) in [
                ("callback_p50", "/callback_ns/p50"),
                ("callback_p99", "/callback_ns/p99"),
                ("callback_max", "/callback_ns/max"),
                ("unthrottled_p50", "/unthrottled_per_period/p50"),
                ("unthrottled_max", "/unthrottled_per_period/max"),
                ("spread_max", "/spread/per_period/max"),
            ] {
                same(&mut v, &who, c, name, side, num(x, ptr));
            }
        }
    }
    // Every cgroup is paired or listed as one side's own, once.
    for (side, r, paired) in [("before", before, &paired_b), ("after", after, &paired_a)] {
        let only: Vec<u64> = list(d, &format!("/only_{side}"))
            .iter()
            .filter_map(|c| c["id"].as_u64())
            .collect();
        for c in list(r, "/cgroups") {
            let id = c["id"].as_u64().unwrap_or(u64::MAX);
            let n = paired.iter().filter(|x| **x == id).count()
                + only.iter().filter(|x| **x == id).count();
            v.need(n == 1, || {
                format!("{side} cgroup {id}: paired or listed {n} times")
            });
        }
    }
    v
}

/// The VM's comparison of a short period with a longer one: the node's worst span fell, and
/// the node's verdict says better, decided by it.
pub fn check_worst_span_fell(d: &Value) -> Verdict {
    let mut v = check_diff(d);
    let f = figure(list(d, "/node/figures"), "worst_span");
    let (b, a) = (
        f.and_then(|f| num(f, "/before")),
        f.and_then(|f| num(f, "/after")),
    );
    v.need(matches!((b, a), (Some(b), Some(a)) if a < b), || {
        format!("the node's worst span did not fall: {b:?} ns -> {a:?} ns")
    });
    v.need(
        text(d, "/node/verdict/verdict") == Some("better")
            && text(d, "/node/verdict/figure") == Some("worst_span"),
        || {
            format!(
                "node verdict {} by {} (want better by worst_span): {}",
                show(at(d, "/node/verdict/verdict")),
                show(at(d, "/node/verdict/figure")),
                show(at(d, "/node/verdict/why"))
            )
        },
    );
    v
}
