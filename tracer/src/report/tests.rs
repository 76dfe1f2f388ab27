//! The room's own contract: `build_report` end to end, the JSON's field names, a capture file
//! in, a report out, and reports from older versions still read.
use super::fixtures::*;
use serde_json::Value;

use super::*;
use crate::analysis::{Aggregator, UNRESOLVED_NAME};
use crate::capture::{CaptureLine, CaptureWriter, EndRecord};

/// The fields of a [`Stats`].
const STATS: &str = "count min p50 p90 p99 max mean";

fn any(_: &Value) -> bool {
    true
}

fn num(v: &Value) -> bool {
    v.is_number()
}

/// A figure: says whether it is available.
fn figure(f: &Value) -> bool {
    f["available"].is_boolean()
}

/// The culprit is the cgroup that drove the node's worst IRQs-off span, not the busiest by
/// total; that one is the second figure, and the wording keeps "its" and "the node's" apart.
#[test]
fn culprit_is_by_headroom_and_busiest_by_total_is_second() {
    let r = build_report(
        &irq_header(),
        &culprit_differs_agg(),
        40_000_000_000,
        vec![],
    );
    // The table stays by total: YARN first.
    assert_eq!(r.cgroups[0].id, 20);
    let c = r.culprit.as_ref().unwrap();
    assert_eq!(c.cgroup.id, 30, "{}", c.reason);
    assert_eq!(r.headroom_ns, Some(10_000_000_000 - 900_000));
    assert_eq!(c.cgroup.headroom_ns, r.headroom_ns);
    let b = c.busiest_by_total.as_ref().expect("busiest by total");
    assert_eq!((b.id, b.path.as_deref()), (20, Some(YARN)));
    assert_eq!(b.worst_irqs_off_ns, 900_000);
    assert_eq!(
        c.headline,
        "/system.slice/cron.service (systemd cron.service): 600 us of the node's worst \
         IRQs-off span (900 us on cpu5)"
    );
    // Short but for the name, which the views cut to fit.
    let name_len = "/system.slice/cron.service (systemd cron.service)".len();
    assert!(c.headline.len() - name_len <= 60, "{}", c.headline);
    assert!(
        c.reason.contains(
            "its timers took 600 us of the node's worst timer-interrupt span, 900 us on cpu5 \
             (2 period timers in it)"
        ),
        "{}",
        c.reason
    );
    assert!(
        c.reason.ends_with(&format!(
            "by total IRQs-off time the busiest cgroup is {YARN} (15.3 ms in total, its worst \
             900 us)"
        )),
        "{}",
        c.reason
    );
    // Without the span, YARN's 310 us callback is the node's worst and YARN the culprit.
    let r = build_report(&header(), &agg(), 8_000_000_000, vec![]);
    let c = r.culprit.as_ref().unwrap();
    assert_eq!(c.cgroup.id, 20);
    assert_eq!(c.busiest_by_total, None);
    // ...but the unresolved callback (400 us) is the node's worst: "its worst", never "the
    // node's".
    assert!(
        c.headline
            .ends_with(": 310 us in one callback, its worst IRQs-off time"),
        "{}",
        c.headline
    );
    assert!(
        c.reason
            .contains("(the node's worst IRQs-off time: 400 us on cpu2, a period-timer callback)"),
        "{}",
        c.reason
    );
}

#[test]
fn culprit_stats_and_order() {
    let r = build_report(&header(), &agg(), 8_000_000_000, vec!["w1".into()]);
    assert_eq!(r.schema, REPORT_SCHEMA);
    assert_eq!(r.duration_s, 8.0);
    assert_eq!(r.events.periods, 112);
    assert_eq!(r.events.lost, 2);
    let ids: Vec<u64> = r.cgroups.iter().map(|c| c.id).collect();
    assert_eq!(ids, vec![20, 0, 30]);
    let c = r.culprit.as_ref().unwrap();
    assert_eq!(c.cgroup.id, 20);
    assert_eq!(c.cgroup.path.as_deref(), Some(YARN));
    assert_eq!(c.cgroup.periods, 101);
    let cb = c.cgroup.callback_ns;
    assert_eq!((cb.count, cb.min, cb.max), (101, 100_000, 310_000));
    assert!((148_000..=152_000).contains(&cb.p50), "{}", cb.p50);
    assert!(cb.p99 >= 198_000 && cb.p99 <= 310_000, "{}", cb.p99);
    assert_eq!(c.cgroup.headroom_ns, Some(10_000_000_000 - 310_000));
    assert_eq!(r.headroom_ns, Some(10_000_000_000 - 400_000));
    assert_eq!(c.cgroup.period_us, Some(100_000));
    assert_eq!(c.cgroup.quota_us, Some(20_000));
    assert_eq!(c.cgroup.kernel_period_us, Some(100_000));
    assert_eq!(c.cgroup.kernel_quota_us, Some(20_000));
    assert_eq!(c.cgroup.cpus.len(), 48);
    let u = c.cgroup.unthrottled_per_period.unwrap();
    assert_eq!((u.p50, u.max), (3, 48));
    assert!(
        c.reason.starts_with(&format!(
            "{YARN} (yarn application_1512098667219_988894): its worst single callback held \
             IRQs off for 310 us (the node's worst"
        )),
        "{}",
        c.reason
    );
    assert!(
        c.reason
            .contains("; 101 period-timer callbacks held IRQs off for "),
        "{}",
        c.reason
    );
    assert!(
        c.reason.contains("its worst callback 310 us (p99 "),
        "{}",
        c.reason
    );
    assert!(
        c.reason.contains("3.4 cfs_rqs unthrottled per period"),
        "{}",
        c.reason
    );
    assert!(
        c.reason.ends_with("watchdog headroom 9.9997 s of 10 s"),
        "{}",
        c.reason
    );
    // The unresolved bucket is reported but is not the culprit.
    let unres = &r.cgroups[1];
    assert_eq!(unres.path, None);
    assert!(unres.note.as_deref().unwrap().starts_with(UNRESOLVED_NAME));
    assert_eq!(r.warnings[0], "w1");
    assert!(r.warnings.iter().any(|w| w.contains("2 event(s) lost")));
    let cpu3 = r.cpus.iter().find(|c| c.cpu == 3).unwrap();
    assert_eq!(cpu3.max_callback_ns, 310_000);
    assert_eq!(cpu3.period_timers, 4);
}

#[test]
fn losses_mark_the_figures_partial() {
    // agg() lost 2 events: the report says its figures are a lower bound, first among the
    // losses' warnings, and the JSON carries the mark.
    let r = build_report(&header(), &agg(), 8_000_000_000, vec![]);
    assert!(r.events.partial);
    let why = crate::report::partial_reason(&r.events).unwrap();
    assert!(
        why.starts_with(
            "partial figures: 2 event(s) lost (the ring buffer was full; a larger \
             --ring-buffer keeps more): figures counted from events are a lower bound"
        ),
        "{why}"
    );
    assert_eq!(r.warnings[0], why);
    let v = serde_json::to_value(&r).unwrap();
    assert_eq!(v["events"]["partial"], true);
    // The kernel's sums of lost callbacks, and callbacks it could not sum, are said too.
    let e = Events {
        lost: 5,
        periods_unsent: 3,
        unsent_full: 1,
        partial: true,
        ..Events::default()
    };
    let why = crate::report::partial_reason(&e).unwrap();
    assert!(
        why.contains("; 3 of them were period-timer callbacks, counted back"),
        "{why}"
    );
    assert!(
        why.contains("; 1 lost callback(s) could not be summed"),
        "{why}"
    );
    // No loss, no mark.
    let r = build_report(&header(), &Aggregator::new(), 1_000_000_000, vec![]);
    assert!(!r.events.partial);
    assert_eq!(crate::report::partial_reason(&r.events), None);
    assert!(r.warnings.iter().all(|w| !w.contains("partial")));
}

#[test]
fn no_periods_no_culprit() {
    let r = build_report(&header(), &Aggregator::new(), 1_000_000_000, vec![]);
    assert!(r.culprit.is_none());
    assert!(r.headroom_ns.is_none());
    assert!(r.cgroups.is_empty());
    let v = serde_json::to_value(&r).unwrap();
    assert!(v["culprit"].is_null());
}

#[test]
fn only_unresolved_can_be_the_culprit() {
    let mut a = Aggregator::new();
    a.add_period(&rec(0, 0, 0, 5_000, 1));
    let r = build_report(&header(), &a, 1, vec![]);
    let c = r.culprit.unwrap();
    assert_eq!(c.cgroup.id, 0);
    assert!(c.reason.starts_with(UNRESOLVED_NAME), "{}", c.reason);
}

#[test]
fn json_field_names_follow_the_contract() {
    let r = build_report(&header(), &agg(), 8_000_000_000, vec![]);
    let v = round_trip(&r);
    fields(
        &v,
        "",
        "schema tool_version hostname kernel ncpus backend backend_requested probes watchdog \
         duration_s events figures cgroups cpus headroom_ns culprit warnings headroom_basis \
         worst_irqs_off precursors headroom_alert",
        any,
    );
    fields(&v, "/headroom_alert", "under_pct headroom_pct alert", any);
    fields(&v, "/figures", "irq_span spread kernel_messages", figure);
    let spans = "irq_spans periods_in_span span_unmatched_exit span_missed_exit";
    fields(&v, "/events", spans, num);
    let cpu = "irq_span_ns max_irq_span_ns period_timers_per_span period_timer_share";
    fields(&v, "/cpus/0", cpu, any);
    fields(&v, "/cpus/0", "headroom_ns headroom_basis", any);
    let cgroup = "headroom_basis worst_irq_span spread precursors parents";
    fields(&v, "/cgroups/0", cgroup, any);
    let precursors = "period_changes callbacks_over_period multi_pass_callbacks kernel_messages";
    fields(&v, "/cgroups/0/precursors", precursors, any);
    assert_eq!(v["schema"], "cfstrace.report/1");
    assert_eq!(v["ncpus"], 48);
    assert_eq!(v["watchdog"]["thresh_s"], 10);
    assert_eq!(v["watchdog"]["enabled"], true);
    assert_eq!(v["events"]["periods"], 112);
    assert_eq!(v["events"]["lost"], 2);
    let losses = "ringbuf_full unmatched_exit missed_exit cgroup_read";
    fields(&v, "/events", losses, any);
    let counts = "callback_ns loops unthrottled enqueued runnable";
    fields(&v, "/figures", counts, |f| {
        figure(f) && f.get("how").is_some() && f.get("reason").is_some()
    });
    assert_eq!(v["probes"]["period_timer"]["how"], "tracepoint");
    let c = &v["cgroups"][0];
    assert_eq!(c["id"], 20);
    assert_eq!(c["path"], YARN);
    assert_eq!(c["workload"]["kind"], "yarn");
    assert_eq!(
        c["workload"]["application"],
        "application_1512098667219_988894"
    );
    assert_eq!(c["processes"][0]["pid"], 100);
    assert_eq!(c["processes"][0]["comm"], "python");
    assert_eq!(c["period_us"], 100_000);
    assert_eq!(c["quota_us"], 20_000);
    assert_eq!(c["periods"], 101);
    fields(c, "/callback_ns", STATS, num);
    fields(c, "/unthrottled_per_period", STATS, num);
    assert!(c["enqueued_per_period"].is_null());
    assert!(c["max_loops"].is_null());
    assert!(c.get("runnable_per_period").is_some());
    assert_eq!(c["headroom_ns"], 10_000_000_000i64 - 310_000);
    assert!(c["cpus"].is_array());
    let cpu = "cpu period_timers timer_irq_ns max_callback_ns";
    fields(&v, "/cpus/0", cpu, num);
    // The culprit is the cgroup record, flattened, plus its reason.
    assert_eq!(v["culprit"]["id"], 20);
    assert_eq!(v["culprit"]["path"], YARN);
    assert!(v["culprit"]["callback_ns"]["p99"].is_number());
    assert!(v["culprit"]["reason"].as_str().unwrap().contains(YARN));
}

#[test]
fn async_unthrottle_in_the_json() {
    let r = build_report(&async_header(), &async_agg(), 8_000_000_000, vec![]);
    let v = round_trip(&r);
    let f = &v["figures"]["async_unthrottle"];
    assert_eq!(f["available"], true);
    assert_eq!(
        f["how"],
        "tracepoint csd_function_entry/exit (raw_tp) filtered on __cfsb_csd_unthrottle"
    );
    assert_eq!(v["events"]["async_unthrottle"], 10);
    assert_eq!(v["events"]["async_csds"], 10);
    let csds = "async_empty csd_unmatched_exit csd_missed_exit";
    fields(&v, "/events", csds, num);
    let c = &v["cgroups"][0];
    assert_eq!(c["id"], 20);
    let a = &c["async_unthrottle"];
    assert_eq!(a["csds"], 10);
    assert_eq!(a["unthrottled"], 10);
    assert_eq!(a["cpus"], serde_json::json!([1, 2]));
    assert_eq!(a["total_ns"], (0..10).map(|i| 3_000 + i).sum::<u64>());
    assert_eq!(a["attribution"], "listed");
    assert_eq!(a["runnable"], 20);
    assert!(a["enqueued"].is_null());
    fields(a, "/per_csd_ns", STATS, num);
    assert_eq!(a["per_csd_ns"]["max"], 3_009);
    // Cgroups without async work say null.
    assert!(v["cgroups"][2]["async_unthrottle"].is_null());
    // Per CPU: the CSDs, also on CPUs whose timers did not fire.
    let cpu2 = r.cpus.iter().find(|c| c.cpu == 2).unwrap();
    assert_eq!((cpu2.async_csds, cpu2.max_async_ns), (5, 3_009));
    fields(&v, "/cpus/0", "async_csds async_ns max_async_ns", num);
    let reason = v["culprit"]["reason"].as_str().unwrap();
    assert!(
        reason.contains(
            "3.4 cfs_rqs unthrottled per period + 10 cfs_rqs unthrottled asynchronously \
             on 2 CPUs (10 CSDs, worst 3.01 us); watchdog headroom"
        ),
        "{reason}"
    );
    assert_eq!(v["culprit"]["async_unthrottle"]["csds"], 10);
}

#[test]
fn parents_in_the_json() {
    let r = build_report(&header(), &agg(), 8_000_000_000, vec![]);
    let v = serde_json::to_value(&r).unwrap();
    let c = &v["cgroups"][0];
    assert_eq!(c["path"], YARN);
    assert_eq!(
        c["parents"],
        serde_json::json!([{"path": "/yarn", "id": 19, "period_us": 100_000, "quota_us": 50_000}])
    );
    let by_id = |id: u64| {
        let all = v["cgroups"].as_array().unwrap();
        all.iter().find(|c| c["id"] == id).unwrap()
    };
    let cron = by_id(30);
    assert_eq!(cron["parents"][0]["path"], "/system.slice");
    assert!(cron["parents"][0]["quota_us"].is_null());
    assert!(cron["parents"][0]["period_us"].is_null());
    // Never named: unknown, not "top level".
    assert!(by_id(0)["parents"].is_null());
    // A report from before `parents` and `headroom_alert` still reads.
    let mut old = v.clone();
    old.as_object_mut().unwrap().remove("headroom_alert");
    for c in old["cgroups"].as_array_mut().unwrap() {
        c.as_object_mut().unwrap().remove("parents");
    }
    old["culprit"].as_object_mut().unwrap().remove("parents");
    let back: Report = serde_json::from_value(old).unwrap();
    assert!(back.cgroups.iter().all(|c| c.parents.is_none()));
    assert_eq!(back.headroom_alert, None);
    assert_eq!(back.highlight_under(), DEFAULT_HIGHLIGHT_PCT);
}

#[test]
fn from_a_capture_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("c.jsonl");
    let f = std::fs::File::create(&path).unwrap();
    let mut w = CaptureWriter::new(f, &header()).unwrap();
    w.write_line(&CaptureLine::Cgroup(Box::new(yarn_record())))
        .unwrap();
    w.write_line(&CaptureLine::Period(rec(20, 1, 1_000, 50_000, 2)))
        .unwrap();
    w.write_line(&CaptureLine::End(EndRecord {
        ts_ns: 9,
        duration_ns: 2_000_000_000,
        reason: crate::model::probe::StopReason::Duration,
        periods: 1,
        lost: 0,
        command_status: None,
        async_unthrottle: 0,
        irq_spans: 0,
        kmsg_period_scaling: 0,
    }))
    .unwrap();
    w.flush().unwrap();
    drop(w);
    let r = report_from_capture(&path).unwrap();
    assert_eq!(r.duration_s, 2.0);
    assert_eq!(r.culprit.unwrap().cgroup.path.as_deref(), Some(YARN));
    assert!(r.warnings.is_empty(), "{:?}", r.warnings);

    // Without an end line: duration from the callbacks, and a warning.
    let f = std::fs::File::create(&path).unwrap();
    let mut w = CaptureWriter::new(f, &header()).unwrap();
    w.write_line(&CaptureLine::Period(rec(20, 1, 1_000, 50_000, 2)))
        .unwrap();
    w.write_line(&CaptureLine::Period(rec(20, 1, 101_000, 50_000, 2)))
        .unwrap();
    drop(w);
    let r = report_from_capture(&path).unwrap();
    assert!(
        (r.duration_s - 150_000e-9).abs() < 1e-12,
        "{}",
        r.duration_s
    );
    assert!(r.warnings.iter().any(|w| w.contains("no end line")));
}

#[test]
fn low_headroom_in_the_reason() {
    let r = build_report(&header(), &long_callback_agg(), 1, vec![]);
    let why = r.culprit.unwrap().reason;
    assert!(why.ends_with("watchdog headroom 0.5 s of 10 s"), "{why}");
}
