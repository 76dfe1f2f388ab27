//! A capture's digest, here and from the guest's awk, against its report.

use super::*;

#[test]
fn capture_digest_parses_and_matches() {
    let capture = r#"{"schema":"cfstrace.capture/1"}
{"kind":"period","ts_ns":110,"cpu":0,"duration_ns":3000,"cgroup_id":7,"span_ts_ns":100}
{"kind":"period","ts_ns":120,"cpu":0,"duration_ns":4000,"cgroup_id":8,"span_ts_ns":100}
{"kind":"irq_span","ts_ns":100,"cpu":0,"duration_ns":9000,"timers":2,"timers_ns":7000,"flags":4}
{"kind":"period","ts_ns":510,"cpu":0,"duration_ns":1000,"cgroup_id":7,"span_ts_ns":0}
"#;
    let d = CaptureDigest::from_capture(capture);
    // What the guest's awk prints for the same capture.
    let guest = CaptureDigest::parse(&[
        r#"{"kind":"irq_span","ts_ns":100,"cpu":0,"duration_ns":9000,"timers":2,"timers_ns":7000,"flags":4}"#,
        "P 0 100 2 7000 2",
        "P 0 0 1 1000 1",
        "G 7 2",
        "G 8 1",
    ]);
    assert_eq!(d, guest);
    assert_eq!((d.periods(), d.periods_in_span()), (3, 2));
    let r = serde_json::json!({
        "events": {"periods": 3, "periods_in_span": 2, "irq_spans": 1, "lost": 0},
        "cgroups": [{"id": 7, "periods": 2}, {"id": 8, "periods": 1}],
        "cpus": [{"cpu": 0, "irq_spans": 1, "max_irq_span_ns": 9000,
                  "worst_irq_span": {"ts_ns": 100, "duration_ns": 9000, "timers": 2, "timers_ns": 7000},
                  "period_timers_per_span": {"max": 2}}]
    });
    let v = check_capture(&r, &d);
    assert!(v.failures.is_empty(), "{:?}", v.failures);
    // A span whose timers disagree with its callback lines, and a garbled line.
    let mut g = guest.clone();
    g.by_span.insert((0, 100), (1, 3000, 1));
    g.garbled.push("P 0 [   12.5] x".into());
    assert_eq!(check_capture(&r, &g).failures.len(), 4);
}
