//! The diff oracle on hand-made documents: it accepts one that follows the rule and catches a
//! wrong change, a wrong trend, a wrong verdict and a figure that is not the report's.
use serde_json::{Value, json};

use super::super::diff::*;

fn fig(name: &str, b: f64, a: f64, trend: &str, judged: bool) -> Value {
    json!({"figure": name, "before": b, "after": a, "change": a - b,
           "change_pct": (a - b) * 100.0 / b, "trend": trend, "judged": judged})
}

fn doc() -> Value {
    json!({
        "schema": "cfstrace.diff/1", "noise_pct": 10.0,
        "before": {"kernel": "6.1", "ncpus": 2, "periods": 10, "lost": 0},
        "after": {"kernel": "6.1", "ncpus": 2, "periods": 10, "lost": 0},
        "node": {
            "same_kernel": true,
            "figures": [
                fig("worst_span", 3_000_000.0, 1_000_000.0, "better", true),
                fig("headroom", 99.97, 99.99, "better", false),
                fig("callback_max", 100_000.0, 105_000.0, "unchanged", true),
            ],
            "verdict": {"verdict": "better", "figure": "worst_span", "why": "worst span fell"}
        },
        "cgroups": [], "only_before": [], "only_after": []
    })
}

fn report(worst: f64, cb_max: f64) -> Value {
    json!({"kernel": "6.1", "ncpus": 2, "events": {"periods": 10, "lost": 0},
           "watchdog": {"thresh_s": 10}, "worst_irqs_off": {"duration_ns": worst},
           "headroom_ns": 1e10 - worst, "cgroups": [{"id": 1, "callback_ns": {"max": cb_max}}],
           "precursors": null})
}

#[test]
fn a_document_that_follows_the_rule_passes() {
    let v = check_worst_span_fell(&doc());
    assert!(v.failures.is_empty(), "{:?}", v.failures);
}

#[test]
fn wrong_trends_changes_and_verdicts_are_caught() {
    let mut d = doc();
    d["node"]["figures"][2]["trend"] = json!("worse");
    assert!(!check_diff(&d).failures.is_empty());
    let mut d = doc();
    d["node"]["figures"][0]["change"] = json!(5.0);
    assert!(!check_diff(&d).failures.is_empty());
    let mut d = doc();
    d["node"]["verdict"]["verdict"] = json!("worse");
    assert!(!check_diff(&d).failures.is_empty());
    // The span rose: not the VM's expectation.
    let mut d = doc();
    d["node"]["figures"][0] = fig("worst_span", 1_000_000.0, 3_000_000.0, "worse", true);
    d["node"]["verdict"] = json!({"verdict": "worse", "figure": "worst_span", "why": "x"});
    assert!(check_diff(&d).failures.is_empty());
    assert!(!check_worst_span_fell(&d).failures.is_empty());
}

#[test]
fn figures_must_be_the_reports() {
    let mut d = doc();
    // Only the figures the test reports carry.
    d["node"]["figures"].as_array_mut().unwrap().truncate(1);
    d["node"]["figures"].as_array_mut().unwrap().push(fig(
        "callback_max",
        100_000.0,
        105_000.0,
        "unchanged",
        true,
    ));
    d["only_before"] = json!([{"id": 1}]);
    d["only_after"] = json!([{"id": 1}]);
    let (b, a) = (
        report(3_000_000.0, 100_000.0),
        report(1_000_000.0, 105_000.0),
    );
    let v = check_diff_against_reports(&d, &b, &a);
    // Headroom, lost and precursors are missing from this document: said, not passed.
    assert!(
        v.failures.iter().any(|f| f.contains("headroom")),
        "{:?}",
        v.failures
    );
    assert!(
        !v.failures.iter().any(|f| f.contains("worst_span")),
        "{:?}",
        v.failures
    );
    let b2 = report(2_000_000.0, 100_000.0);
    let v = check_diff_against_reports(&d, &b2, &a);
    assert!(
        v.failures
            .iter()
            .any(|f| f.contains("node worst_span before")),
        "{:?}",
        v.failures
    );
}

#[test]
fn noise_rule_matches_the_readme() {
    assert_eq!(
        expected_trend("callback_max", 100_000.0, 109_999.0, 10.0),
        "unchanged"
    );
    assert_eq!(
        expected_trend("callback_max", 100_000.0, 110_000.0, 10.0),
        "worse"
    );
    assert_eq!(
        expected_trend("callback_p99", 1e6, 1.007e6, 0.0),
        "unchanged"
    );
    assert_eq!(expected_trend("precursors", 0.0, 1.0, 10.0), "worse");
    assert_eq!(expected_trend("headroom", 99.98, 99.99, 10.0), "better");
}
