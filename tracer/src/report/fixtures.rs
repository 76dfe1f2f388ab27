//! Test captures shared by the report's tests and the renderers': a tracepoint-only 6.18 host
//! with 48 CPUs, a YARN container that is the culprit, a systemd service and unresolved
//! callbacks; variants with async-unthrottle CSDs and timer-interrupt spans.
use tracer_ebpf::{
    ASYNC_LAST, ASYNC_LISTED, HOW_CGROUP, HOW_FRAME_TRACEPOINT, HOW_PERIOD, HOW_RUNNABLE,
    HOW_UNTHROTTLE,
};

use crate::analysis::Aggregator;
use crate::capture::{
    AsyncRecord, CaptureHeader, CgroupFacts, CgroupRecord, IrqSpanRecord, LossRecord, ParentRecord,
    PeriodRecord, PeriodScaling, ProbeStatus, ProcessInfo,
};
use crate::model::probe::{Probe, Style};
use crate::model::workload::classify;

pub const YARN: &str = "/yarn/container_e06_1512098667219_988894_01_000020";

/// Attached with `style` on `target`, with a note when given.
pub fn attached(style: Style, target: &str, reason: Option<&str>) -> ProbeStatus {
    ProbeStatus {
        reason: reason.map(str::to_string),
        ..ProbeStatus::attached(style, target)
    }
}

/// The capture tests' header with the probes of a host without kprobes: the frame on
/// tracepoints, unthrottle counted, enqueue and distribute unavailable, runnable attached.
pub fn header() -> CaptureHeader {
    let mut h = crate::model::records::test_header();
    h.host.hostname = "node7".into();
    for (probe, status) in [
        (
            Probe::Unthrottle,
            attached(Style::Kprobe, "unthrottle_cfs_rq", None),
        ),
        (
            Probe::Enqueue,
            ProbeStatus::not_attached("kprobes are not available (CONFIG_KPROBES off)"),
        ),
        (Probe::Distribute, ProbeStatus::not_attached("no kprobes")),
        (
            Probe::Runnable,
            attached(Style::RawTp, "sched_update_nr_running_tp", None),
        ),
    ] {
        h.probes.insert(probe, status);
    }
    h
}

fn record(id: u64, path: &str, quota_us: Option<u64>, parent: ParentRecord) -> CgroupRecord {
    CgroupRecord {
        facts: CgroupFacts {
            id,
            path: Some(path.into()),
            workload: classify(path),
            processes: vec![],
            period_us: Some(100_000),
            quota_us,
        },
        note: None,
        parents: Some(vec![parent]),
    }
}

/// The YARN container (id 20): two python processes, 20 ms of 100 ms, under /yarn's quota.
pub fn yarn_record() -> CgroupRecord {
    let python = |pid, cpu_ticks| ProcessInfo {
        pid,
        comm: "python".into(),
        cmdline: None,
        cpu_ticks,
    };
    let parent = ParentRecord {
        path: "/yarn".into(),
        id: Some(19),
        period_us: Some(100_000),
        quota_us: Some(50_000),
    };
    let mut yarn = record(20, YARN, Some(20_000), parent);
    yarn.facts.processes = vec![python(100, 50), python(101, 40)];
    yarn
}

/// cron.service (id 30): no processes, no quota of its own, under a slice without one.
pub fn other_record() -> CgroupRecord {
    let parent = ParentRecord {
        path: "/system.slice".into(),
        id: Some(29),
        period_us: None,
        quota_us: None,
    };
    record(30, "/system.slice/cron.service", None, parent)
}

pub const FLAGS: u32 = HOW_FRAME_TRACEPOINT | HOW_UNTHROTTLE | HOW_CGROUP | HOW_PERIOD;

/// A callback of cgroup `cg` on `cpu` at `ts` taking `dur`, unthrottling `unthr` cfs_rqs.
pub fn rec(cg: u64, cpu: u32, ts: u64, dur: u64, unthr: u32) -> PeriodRecord {
    PeriodRecord {
        ts_ns: ts,
        cpu,
        duration_ns: dur,
        cgroup_id: cg,
        unthrottled: unthr,
        period_ns: 100_000_000,
        quota_ns: 20_000_000,
        flags: FLAGS,
        ..Default::default()
    }
}

/// The YARN container busiest (101 callbacks, worst 310 us on cpu3), cron short, one long
/// unresolved callback (400 us on cpu2), two events lost.
pub fn agg() -> Aggregator {
    let mut a = Aggregator::new();
    a.add_cgroup(yarn_record());
    a.add_cgroup(other_record());
    // YARN container: 100 callbacks of 100..=199 us, plus one of 310 us.
    for i in 0..100u64 {
        a.add_period(&rec(
            20,
            (i % 48) as u32,
            i * 100_000_000,
            100_000 + i * 1_000,
            3,
        ));
    }
    a.add_period(&rec(20, 3, 10_000_000_000, 310_000, 48));
    // cron: fewer, shorter.
    for i in 0..10u64 {
        a.add_period(&rec(30, 1, 5 + i * 100_000_000, 2_000, 1));
    }
    // Unresolved: one long callback but little in total... still more than cron.
    a.add_period(&rec(0, 2, 7, 400_000, 0));
    a.set_loss(LossRecord {
        ts_ns: 1,
        ringbuf_full: 2,
        ..Default::default()
    });
    a
}

/// A whole async-unthrottle CSD of one cgroup.
pub fn async_rec(cg: u64, cpu: u32, csd_ts: u64, dur: u64, flags: u32) -> AsyncRecord {
    AsyncRecord {
        ts_ns: csd_ts,
        cpu,
        duration_ns: dur,
        cgroup_id: cg,
        csd_ts_ns: csd_ts,
        csd_ns: dur,
        segment: 0,
        unthrottled: 1,
        enqueued: 0,
        runnable: 2,
        flags: flags | ASYNC_LAST,
    }
}

/// The header of a tracepoint-only 6.3+ host: the CSD frame on the csd tracepoints, cgroups
/// listed from the rq's CSD list.
pub fn async_header() -> CaptureHeader {
    let mut h = header();
    h.probes.insert(
        Probe::AsyncUnthrottle,
        attached(
            Style::Tracepoint,
            "csd_function_entry/exit (raw_tp) filtered on __cfsb_csd_unthrottle",
            Some("unthrottle_cfs_rq is not probed here: cgroups are listed"),
        ),
    );
    h
}

/// `agg()` plus ten CSDs that unthrottled the YARN container's cfs_rqs on CPUs 1 and 2.
pub fn async_agg() -> Aggregator {
    let mut a = agg();
    let listed = HOW_FRAME_TRACEPOINT | ASYNC_LISTED | HOW_RUNNABLE | HOW_CGROUP;
    for i in 0..10u64 {
        a.add_async(&async_rec(
            20,
            1 + (i % 2) as u32,
            1_000 + i * 100_000,
            3_000 + i,
            listed,
        ));
    }
    a
}

/// `async_agg()` plus one 450 us CSD on cpu5, longer than any callback.
pub fn long_csd_agg() -> Aggregator {
    let mut a = async_agg();
    let mut big = async_rec(20, 5, 99_000, 450_000, HOW_FRAME_TRACEPOINT);
    big.csd_ns = 450_000;
    a.add_async(&big);
    a
}

/// The header with the timer-interrupt span frame attached.
pub fn irq_header() -> CaptureHeader {
    let mut h = header();
    h.probes.insert(
        Probe::IrqSpan,
        attached(
            Style::Tracepoint,
            "local_timer_entry/exit (raw_tp, irq_vectors)",
            None,
        ),
    );
    h
}

fn in_span(mut p: PeriodRecord, span_ts: u64) -> PeriodRecord {
    p.flags |= tracer_ebpf::HOW_IN_SPAN;
    p.span_ts_ns = span_ts;
    p
}

/// `a` plus one timer interrupt of `duration_ns` on `cpu` at `ts`, which ran two callbacks:
/// `(cgroup, its time)` each, the second after the first.
fn two_in_a_span(
    mut a: Aggregator,
    cpu: u32,
    ts: u64,
    duration_ns: u64,
    first: (u64, u64, u32),
    second: (u64, u64, u32),
) -> Aggregator {
    for (i, (cg, dur, unthr)) in [first, second].into_iter().enumerate() {
        a.add_period(&in_span(
            rec(
                cg,
                cpu,
                ts + 100 + i as u64 * (first.1 + 20_000),
                dur,
                unthr,
            ),
            ts,
        ));
    }
    a.add_irq_span(&IrqSpanRecord {
        ts_ns: ts,
        cpu,
        duration_ns,
        timers: 2,
        timers_ns: first.1 + second.1,
        flags: HOW_FRAME_TRACEPOINT,
    });
    a
}

/// `agg()` plus one timer interrupt on cpu3 that ran the YARN container's worst callback
/// and cron's.
pub fn span_agg() -> Aggregator {
    two_in_a_span(
        agg(),
        3,
        20_000_000_000,
        500_000,
        (20, 310_000, 48),
        (30, 2_000, 1),
    )
}

/// A figure's reason, "" when it has none.
pub fn reason(f: &crate::report::Figure) -> &str {
    f.reason.as_deref().unwrap_or_default()
}

/// A callback on cpu1 under a kernel period and quota of its own.
pub fn with_period(cg: u64, ts: u64, dur: u64, period_ns: u64, quota_ns: u64) -> PeriodRecord {
    PeriodRecord {
        period_ns,
        quota_ns,
        ..rec(cg, 1, ts, dur, 1)
    }
}

/// The header with /dev/kmsg read.
pub fn kmsg_header() -> CaptureHeader {
    let mut h = header();
    h.probes
        .insert(Probe::Kmsg, attached(Style::Read, "/dev/kmsg", None));
    h
}

/// Period changes: the kernel doubles the YARN container's overrun 1 ms period (and says
/// so); someone writes cron's 50 ms, then 70 ms its file never showed; a message about a
/// timer nobody saw.
pub fn precursor_agg() -> Aggregator {
    let mut a = Aggregator::new();
    a.add_cgroup(yarn_record());
    let mut cron = other_record();
    cron.facts.period_us = Some(50_000);
    a.add_cgroup(cron);
    a.add_period(&with_period(
        20,
        1_000_000_000,
        1_500_000,
        1_000_000,
        500_000,
    ));
    a.add_period(&with_period(
        20,
        1_010_000_000,
        50_000,
        2_000_000,
        1_000_000,
    ));
    a.add_kmsg(PeriodScaling {
        ts_us: 1_002_000,
        cpu: 1,
        scaled_up: true,
        period_us: 2_000,
        quota_us: 1_000,
    });
    a.add_period(&with_period(
        30,
        1_000_000_000,
        2_000,
        100_000_000,
        20_000_000,
    ));
    a.add_period(&with_period(
        30,
        2_000_000_000,
        2_000,
        50_000_000,
        10_000_000,
    ));
    a.add_period(&with_period(
        30,
        3_000_000_000,
        2_000,
        70_000_000,
        10_000_000,
    ));
    a.add_kmsg(PeriodScaling {
        ts_us: 9,
        cpu: 7,
        scaled_up: false,
        period_us: 1_000_000,
        quota_us: 1,
    });
    a
}

/// The YARN container throttled on up to 46 of the 48 CPUs a period (47 over the run).
pub fn spread_agg() -> Aggregator {
    let mut a = Aggregator::new();
    a.add_cgroup(yarn_record());
    for (i, list) in ["0-45", "0-39", "2-41", "0-39,47"].iter().enumerate() {
        let mut p = rec(20, 3, i as u64 * 100_000_000, 200_000, 46);
        p.flags |= tracer_ebpf::HOW_SPREAD;
        p.spread_cpus = crate::model::cpuset::CpuSet::parse_list(list).unwrap();
        a.add_period(&p);
    }
    a
}

/// Every name in `names` (space-separated) is a field under `at` (a JSON pointer) that `ok`
/// accepts.
pub fn fields(
    v: &serde_json::Value,
    at: &str,
    names: &str,
    ok: impl Fn(&serde_json::Value) -> bool,
) {
    for k in names.split_whitespace() {
        let f = v.pointer(&format!("{at}/{k}"));
        assert!(f.is_some_and(&ok), "{at}/{k}: {f:?}");
    }
}

/// The YARN container's one 9.5 s callback: headroom 0.5 s of 10.
pub fn long_callback_agg() -> Aggregator {
    let mut a = Aggregator::new();
    a.add_cgroup(yarn_record());
    a.add_period(&rec(20, 0, 0, 9_500_000_000, 1));
    a
}

/// The report as JSON, checked to read back as the same report.
pub fn round_trip(r: &crate::report::Report) -> serde_json::Value {
    let v = serde_json::to_value(r).unwrap();
    let back: crate::report::Report = serde_json::from_value(v.clone()).unwrap();
    assert_eq!(&back, r);
    v
}

/// `agg()` plus the node's worst timer interrupt (900 us on cpu5), in which cron's timer
/// took 600 us and the YARN container's 50 us: YARN stays busiest by total, cron drove the
/// node's worst span.
pub fn culprit_differs_agg() -> Aggregator {
    two_in_a_span(
        agg(),
        5,
        30_000_000_000,
        900_000,
        (30, 600_000, 1),
        (20, 50_000, 3),
    )
}
