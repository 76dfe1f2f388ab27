//! The oracle's unit tests, on fixtures shaped like real reports and kernels: a 7.x guest
//! ([`facts_7x`]), the 6.18 CI host ([`host_618`]) and a consistent report ([`report`]).

use std::collections::BTreeMap;

use serde_json::Value;

use super::*;

mod capture;
mod cofire;
mod diff;
mod report;
mod want;

fn facts_7x() -> Facts {
    let mut m = BTreeMap::new();
    for (k, v) in [
        ("release", "7.2.13+deb14-cloud-amd64"),
        ("ncpus", "2"),
        ("btf", "yes"),
        ("kprobe_pmu", "yes"),
        ("direct_calls", "yes"),
    ] {
        m.insert(k.to_string(), v.to_string());
    }
    for f in FUNCTIONS {
        let present = if f == ENQUEUE_ENTITY_FN { "no" } else { "yes" };
        m.insert(format!("symbol.{f}"), present.into());
        m.insert(format!("ftrace.{f}"), present.into());
    }
    for t in RAW_TPS {
        m.insert(format!("raw_tp.{t}"), "yes".into());
    }
    Facts::from_map(&m)
}

fn host_618() -> Facts {
    let mut f = facts_7x();
    f.set("kprobe_pmu", false);
    f.set(&format!("raw_tp.{CSD_TP}"), false);
    f
}

fn with_release(release: &str) -> Facts {
    let mut f = facts_7x();
    f.release = release.into();
    f
}

const T: i64 = 10_000_000_000;

fn report() -> Value {
    let culprit = serde_json::json!({
        "id": 7,
        "path": "/storm/x/c1",
        "workload": {"kind": "yarn", "application": "app1"},
        "processes": [{"pid": 1, "comm": "sh"}],
        "periods": 800,
        "callback_ns": {"count": 800, "max": 5000},
        "unthrottled_per_period": {"p50": 1, "mean": 1.0},
        "enqueued_per_period": {"p50": 3, "mean": 1.6},
        "queued_per_period": {"p50": 3, "mean": 1.6},
        "runnable_per_period": {"p50": 3, "mean": 1.1},
        "max_loops": 1,
        "headroom_ns": T - 9000,
        "headroom_basis": "irq_span",
        "worst_irq_span": {"cpu": 0, "ts_ns": 100, "duration_ns": 9000, "period_timers": 2,
                           "period_timers_ns": 7000, "own_timers": 1, "own_ns": 5000},
        "spread": {"per_period": {"count": 800, "min": 0, "max": 2}, "cpus": [0, 1], "ncpus": 2}
    });
    serde_json::json!({
        "schema": "cfstrace.report/1",
        "backend": "fentry",
        "backend_requested": "auto",
        "ncpus": 2,
        "watchdog": {"thresh_s": 10},
        "probes": {
            "period_timer": {"attached": true, "how": "fentry", "target": "sched_cfs_period_timer"},
            "irq_span": {"attached": true, "how": "tracepoint", "target": "local_timer_entry/exit (raw_tp, irq_vectors)"},
            "distribute": {"attached": true, "how": "fentry", "target": "distribute_cfs_runtime"},
            "unthrottle": {"attached": true, "how": "fentry", "target": "unthrottle_cfs_rq"},
            "enqueue": {"attached": true, "how": "fentry", "target": "enqueue_task_fair"},
            "runnable": {"attached": true, "how": "raw_tp", "target": "sched_update_nr_running_tp"}
        },
        "events": {"periods": 800, "irq_spans": 3, "periods_in_span": 800},
        "figures": {
            "callback_ns": {"available": true},
            "irq_span": {"available": true},
            "loops": {"available": true},
            "unthrottled": {"available": true},
            "queued": {"available": true},
            "enqueued": {"available": true},
            "runnable": {"available": true}
        },
        "cpus": [
            {"cpu": 0, "period_timers": 800, "max_callback_ns": 5000, "max_async_ns": 0,
             "irq_spans": 3, "irq_span_ns": {"count": 3, "min": 6000, "max": 9000},
             "max_irq_span_ns": 9000,
             "worst_irq_span": {"cpu": 0, "ts_ns": 100, "duration_ns": 9000, "timers": 2,
                                "timers_ns": 7000, "flags": 4},
             "period_timers_per_span": {"count": 3, "min": 1, "max": 2},
             "period_timer_share": 0.5, "headroom_ns": T - 9000, "headroom_basis": "irq_span"},
            {"cpu": 1, "period_timers": 0, "max_callback_ns": 0, "max_async_ns": 4000,
             "irq_spans": 0, "headroom_ns": T - 4000, "headroom_basis": "async_csd"}
        ],
        "headroom_ns": T - 9000,
        "headroom_basis": "irq_span",
        "worst_irqs_off": {"basis": "irq_span", "cpu": 0, "duration_ns": 9000,
                           "period_timers": 2, "period_timers_ns": 7000},
        "cgroups": [culprit.clone()],
        "culprit": culprit
    })
}

const C: Culprit = Culprit {
    path_suffix: "x/c1",
    kind: "yarn",
    application: "app1",
};
const F: Floors = Floors {
    unthrottled_mean: 0.2,
    unthrottled_total_mean: 0.6,
    enqueued_mean: 0.3,
    runnable_mean: 0.3,
    max_loops: 1.0,
    async_per_period: 0.15,
};
