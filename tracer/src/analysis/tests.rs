//! The analysis room's tests: capture lines in, figures out.
use super::aggregate::*;
use super::cgroup::*;
use super::precursors::*;
use super::spread::*;
use super::*;
use crate::model::cpuset::CpuSet;
use crate::model::records::*;
use crate::model::workload::Workload;
use tracer_ebpf::PeriodSums;
use tracer_ebpf::{
    ASYNC_LISTED, HOW_ENQUEUE_ENTITY, HOW_IN_SPAN, HOW_LOOPS, HOW_PERIOD, HOW_RUNNABLE, HOW_SPREAD,
    HOW_UNTHROTTLE,
};

/// Lost callbacks come back from the kernel's cumulative sums: each line adds only what it
/// has beyond the cgroup's previous one, counts and sums exactly, quantiles from buckets.
#[test]
fn unsent_callbacks_count_exactly() {
    let mut agg = Aggregator::new();
    for i in 0..10 {
        agg.add_period(&period(7, 0, 1_000 + i, 2_000));
    }
    let b = |v: u64| tracer_ebpf::log2_bucket(v) as u32;
    let first = UnsentPeriodsRecord {
        ts_ns: 5_000,
        id: 7,
        sums: PeriodSums {
            periods: 4,
            callback_ns_sum: 4 * 3_000,
            callback_ns_max: 3_000,
            over_period: 1,
            ..Default::default()
        },
        callback_log2: vec![(b(3_000), 4)],
    };
    agg.feed(&CaptureLine::UnsentPeriods(first.clone()));
    // The same line again (a later write with nothing new) adds nothing.
    agg.feed(&CaptureLine::UnsentPeriods(first.clone()));
    let later = UnsentPeriodsRecord {
        ts_ns: 9_000,
        sums: PeriodSums {
            periods: 6,
            callback_ns_sum: 4 * 3_000 + 2 * 900_000,
            callback_ns_max: 900_000,
            ..first.sums
        },
        callback_log2: vec![(b(3_000), 4), (b(900_000), 2)],
        ..first
    };
    agg.feed(&CaptureLine::UnsentPeriods(later));
    let v = agg.cgroup(7).expect("cgroup 7");
    let cb = v.stats.callback_ns();
    assert_eq!(cb.count(), 16);
    assert_eq!(v.stats.periods(), 16);
    assert_eq!(cb.sum(), 10 * 2_000 + 4 * 3_000 + 2 * 900_000);
    assert_eq!(
        cb.max(),
        900_000,
        "the worst callback was one whose event was lost"
    );
    assert_eq!(cb.min(), 2_000);
    // The two slow ones land in their bucket: p99 within it.
    let p99 = cb.quantile(0.99);
    assert!((1 << 19..=900_000).contains(&p99), "{p99}");
    assert_eq!(agg.unsent_periods(), 6);
    assert_eq!(agg.periods(), 10, "decoded callbacks stay what was decoded");
    assert_eq!(v.stats.precursors().map(Precursors::over_period), Some(1));
    // A cgroup that lost every event still appears.
    agg.feed(&CaptureLine::UnsentPeriods(UnsentPeriodsRecord {
        id: 8,
        sums: PeriodSums {
            periods: 3,
            callback_ns_sum: 3_000,
            callback_ns_max: 1_500,
            ..Default::default()
        },
        callback_log2: vec![(b(500), 2), (b(1_500), 1)],
        ..Default::default()
    }));
    let v = agg.cgroup(8).expect("cgroup 8");
    assert_eq!((v.stats.periods(), v.stats.total_callback_ns()), (3, 3_000));
}

/// The kernel's worst span of a CPU replaces the events' when it is longer (its event
/// was lost), and never a longer one that arrived.
#[test]
fn kernel_worst_span_counts_when_its_event_was_lost() {
    let mut agg = Aggregator::new();
    agg.add_irq_span(&IrqSpanRecord {
        ts_ns: 100,
        cpu: 1,
        duration_ns: 40_000,
        timers: 3,
        timers_ns: 30_000,
        flags: 0,
    });
    let totals = |worst_ns| CpuTotalsRecord {
        cpu: 1,
        spans: 2,
        worst_ns,
        worst_ts_ns: 500,
        worst_timers: 9,
        worst_timers_ns: 70_000,
        ..Default::default()
    };
    agg.feed(&CaptureLine::CpuTotals(totals(20_000)));
    assert_eq!(
        agg.cpu_spans(1).map(|s| s.worst().duration_ns),
        Some(40_000)
    );
    agg.feed(&CaptureLine::CpuTotals(totals(90_000)));
    let w = agg.cpu_spans(1).map(|s| *s.worst()).expect("spans of cpu1");
    assert_eq!((w.duration_ns, w.timers, w.ts_ns), (90_000, 9, 500));
    assert_eq!(agg.worst_irq_span().map(|w| w.duration_ns), Some(90_000));
    // Only the events' spans are counted: the lost one is not invented.
    assert_eq!(agg.cpu_spans(1).map(|s| s.span_ns().count()), Some(1));
}

fn period(cg: u64, cpu: u32, ts: u64, dur: u64) -> PeriodRecord {
    PeriodRecord {
        ts_ns: ts,
        cpu,
        duration_ns: dur,
        cgroup_id: cg,
        quota_ns: u64::MAX,
        ..Default::default()
    }
}

fn named(id: u64, path: Option<&str>) -> CgroupRecord {
    CgroupRecord {
        facts: CgroupFacts {
            id,
            path: path.map(str::to_string),
            workload: Workload::plain(),
            processes: vec![],
            period_us: None,
            quota_us: None,
        },
        note: None,
        parents: None,
    }
}

#[test]
fn per_cgroup_and_per_cpu_figures() {
    let mut a = Aggregator::new();
    let flags = HOW_UNTHROTTLE | HOW_LOOPS | HOW_PERIOD;
    for i in 0..100u64 {
        let mut p = period(7, (i % 4) as u32, 1_000 + i * 100_000, 1_000 + i);
        p.flags = flags;
        p.unthrottled = 48;
        p.loops = if i == 50 { 3 } else { 1 };
        p.period_ns = 100_000_000;
        p.quota_ns = 20_000_000;
        a.add_period(&p);
    }
    a.add_period(&period(0, 5, 50, 10));
    assert_eq!(a.periods(), 101);
    assert_eq!(a.cgroup_count(), 2);
    let c = a.cgroup(7).unwrap();
    assert_eq!(c.stats.periods(), 100);
    assert_eq!(c.stats.total_callback_ns(), (1_000..1_100).sum::<u64>());
    let d = c.stats.callback_ns();
    assert_eq!((d.min(), d.max()), (1_000, 1_099));
    let p50 = d.quantile(0.5);
    assert!((1_045..=1_058).contains(&p50), "{p50}");
    let u = c.stats.unthrottled().unwrap();
    assert_eq!(
        (u.quantile(0.5), u.quantile(0.99), u.mean()),
        (48, 48, 48.0)
    );
    assert!(c.stats.enqueued().is_none() && c.stats.runnable().is_none());
    assert_eq!(c.stats.max_loops(), Some(3));
    assert_eq!(c.stats.cpus().iter().collect::<Vec<_>>(), vec![0, 1, 2, 3]);
    assert_eq!(c.stats.period_ns(), Some(100_000_000));
    assert_eq!(c.stats.quota_ns(), Some(20_000_000));
    assert_eq!(c.stats.period_change(), None);
    assert_eq!(a.cgroup(0).unwrap().display_name(), UNRESOLVED_NAME);
    assert_eq!(c.display_name(), "(cgroup 7)");

    let cpus: Vec<_> = a.cpus().collect();
    assert_eq!(
        cpus.iter().map(|c| c.0).collect::<Vec<_>>(),
        vec![0, 1, 2, 3, 5]
    );
    assert_eq!(cpus[0].1.period_timers, 25);
    assert_eq!(cpus[3].1.max_callback_ns, 1_099);
    assert_eq!(a.flags_seen(), flags);
    assert_eq!(a.first_ts_ns(), Some(50));
    assert_eq!(a.span_ns(), 1_000 + 99 * 100_000 + 1_099 - 50);
}

#[test]
fn counts_only_when_the_event_says_so() {
    let mut a = Aggregator::new();
    let mut p = period(1, 0, 0, 10);
    p.unthrottled = 0;
    a.add_period(&p);
    p.flags = HOW_UNTHROTTLE;
    p.unthrottled = 4;
    a.add_period(&p);
    let u = a.cgroup(1).unwrap().stats.unthrottled().unwrap().clone();
    assert_eq!((u.count(), u.min(), u.mean()), (1, 4, 4.0));
    assert_eq!(a.cgroup(1).unwrap().stats.max_loops(), None);
}

#[test]
fn names_never_lose_their_path() {
    let mut a = Aggregator::new();
    a.add_cgroup(named(3, Some("/a")));
    a.add_cgroup(named(3, None));
    assert_eq!(a.name(3).unwrap().path.as_deref(), Some("/a"));
    a.add_cgroup(named(3, Some("/b")));
    assert_eq!(a.name(3).unwrap().path.as_deref(), Some("/b"));
    a.add_cgroup(named(4, None));
    a.add_cgroup(named(4, Some("/c")));
    assert_eq!(a.name(4).unwrap().path.as_deref(), Some("/c"));
    a.add_period(&period(3, 0, 0, 1));
    assert_eq!(a.cgroup(3).unwrap().display_name(), "/b");
}

#[test]
fn feed_dispatches_and_keeps_cumulative_loss() {
    let mut a = Aggregator::new();
    a.feed(&CaptureLine::Cgroup(Box::new(named(9, Some("/x")))));
    a.feed(&CaptureLine::Period(period(9, 1, 5, 7)));
    a.feed(&CaptureLine::Loss(LossRecord {
        ts_ns: 2,
        ringbuf_full: 5,
        ..Default::default()
    }));
    a.feed(&CaptureLine::Loss(LossRecord {
        ts_ns: 1,
        ringbuf_full: 3,
        cgroup_read: 1,
        ..Default::default()
    }));
    a.feed(&CaptureLine::End(EndRecord {
        ts_ns: 10,
        duration_ns: 1_000,
        reason: crate::model::probe::StopReason::Duration,
        periods: 1,
        lost: 5,
        command_status: None,
        async_unthrottle: 0,
        irq_spans: 0,
        kmsg_period_scaling: 0,
    }));
    assert_eq!(a.periods(), 1);
    assert_eq!(a.name(9).unwrap().path.as_deref(), Some("/x"));
    let l = a.loss().unwrap();
    assert_eq!((l.ringbuf_full, l.cgroup_read, l.ts_ns), (5, 1, 2));
    assert_eq!(a.end().unwrap().duration_ns, 1_000);
}

#[test]
fn period_rescaling_is_noticed() {
    let mut a = Aggregator::new();
    for period_ns in [1_000_000, 2_000_000] {
        let mut p = period(2, 0, 0, 5);
        p.flags = HOW_PERIOD;
        p.period_ns = period_ns;
        a.add_period(&p);
    }
    let c = a.cgroup(2).unwrap();
    assert_eq!(c.stats.period_change(), Some((1_000_000, 2_000_000)));
    assert_eq!(c.stats.period_ns(), Some(2_000_000));
}

#[test]
fn back_to_back_callbacks_form_a_chain() {
    let mut a = Aggregator::new();
    a.add_period(&period(1, 0, 1_000, 10_000)); // ends 11_000
    a.add_period(&period(2, 0, 11_500, 10_000)); // ends 21_500: chained
    a.add_period(&period(3, 0, 22_000, 5_000)); // ends 27_000: chained
    a.add_period(&period(4, 0, 1_000_000, 8_000)); // alone
    let (_, c) = a.cpus().next().unwrap();
    assert_eq!(c.max_chain_ns, 26_000);
    assert_eq!(c.max_callback_ns, 10_000);
}

#[test]
fn absurd_cpu_numbers_do_not_allocate() {
    let mut a = Aggregator::new();
    a.add_period(&period(1, u32::MAX, 0, 1));
    assert_eq!(a.cpus().count(), 0);
    assert_eq!(a.warnings().len(), 1);
    assert!(a.cgroup(1).unwrap().stats.cpus().is_empty());
}

#[test]
fn clamped_values_keep_their_exact_max() {
    let mut a = Aggregator::new();
    a.add_period(&period(1, 0, 0, u64::MAX / 4));
    let d = a.cgroup(1).unwrap().stats.callback_ns().clone();
    assert_eq!(d.max(), u64::MAX / 4);
    assert_eq!(d.quantile(1.0), u64::MAX / 4);
    assert!(d.heap_bytes() <= 16 * 1024);
}

fn async_ev(cg: u64, cpu: u32, csd_ts: u64, seg: u32, dur: u64, flags: u32) -> AsyncRecord {
    AsyncRecord {
        ts_ns: csd_ts + u64::from(seg) * 1_000,
        cpu,
        duration_ns: dur,
        cgroup_id: cg,
        csd_ts_ns: csd_ts,
        csd_ns: 0,
        segment: seg,
        unthrottled: 1,
        enqueued: 2,
        runnable: 3,
        flags,
    }
}

#[test]
fn async_segments_go_to_their_cgroups_and_csds_to_their_cpus() {
    use tracer_ebpf::{ASYNC_LAST, HOW_FRAME_FENTRY};
    let probed = HOW_FRAME_FENTRY | HOW_UNTHROTTLE | HOW_ENQUEUE_ENTITY | HOW_RUNNABLE;
    let mut a = Aggregator::new();
    // The timer of cgroup 7 fires on CPU 0 ...
    a.add_period(&period(7, 0, 0, 5_000));
    // ... and CPU 1 unthrottles cgroups 7 and 8 in one CSD (two segments), then 7 again.
    a.add_async(&async_ev(7, 1, 1_000, 0, 600, probed));
    let mut last = async_ev(8, 1, 1_000, 1, 400, probed | ASYNC_LAST);
    last.csd_ns = 1_000;
    a.add_async(&last);
    let mut second = async_ev(7, 1, 9_000, 0, 700, probed | ASYNC_LAST);
    second.csd_ns = 700;
    a.add_async(&second);
    assert_eq!(
        (a.async_events(), a.async_csds(), a.async_empty()),
        (3, 2, 0)
    );
    let c7 = a.cgroup(7).unwrap();
    assert_eq!(c7.stats.periods(), 1);
    let s7 = c7.stats.asyncs().unwrap();
    assert_eq!((s7.csds(), s7.unthrottled()), (2, 2));
    assert_eq!((s7.enqueued(), s7.runnable()), (Some(4), Some(6)));
    assert_eq!(
        (
            s7.per_csd_ns().count(),
            s7.per_csd_ns().sum(),
            s7.per_csd_ns().max()
        ),
        (2, 1_300, 700)
    );
    assert_eq!(s7.cpus().iter().collect::<Vec<_>>(), vec![1]);
    // Seen only in a CSD: a cgroup with no callback of its own (its timer was elsewhere).
    let c8 = a.cgroup(8).unwrap();
    assert_eq!(c8.stats.periods(), 0);
    assert_eq!(c8.stats.asyncs().unwrap().csds(), 1);
    // CPU 1 ran no period timer but is listed, with whole-CSD time from the last events.
    let cpus: Vec<_> = a.cpus().map(|(c, s)| (c, *s)).collect();
    assert_eq!(cpus.len(), 2);
    let (n, c1) = cpus[1];
    assert_eq!(n, 1);
    assert_eq!(c1.period_timers, 0);
    assert_eq!(
        (c1.async_csds, c1.async_ns, c1.max_async_ns),
        (2, 1_700, 1_000)
    );
    assert_eq!(cpus[0].1.async_csds, 0);
    assert!(a.cgroup(0).is_none());
}

#[test]
fn listed_and_empty_csds() {
    use tracer_ebpf::{
        ASYNC_EMPTY, ASYNC_LAST, ASYNC_SHARED, ASYNC_TRUNCATED, HOW_FRAME_TRACEPOINT,
    };
    let listed = HOW_FRAME_TRACEPOINT | ASYNC_LISTED | ASYNC_SHARED | HOW_RUNNABLE;
    let mut a = Aggregator::new();
    // One CSD listing two cgroups: each gets the whole (shared) CSD time, the CPU once.
    a.add_async(&async_ev(7, 0, 100, 0, 900, listed));
    let mut l = async_ev(8, 0, 100, 1, 900, listed | ASYNC_LAST | ASYNC_TRUNCATED);
    l.csd_ns = 900;
    a.add_async(&l);
    // A CSD that found nothing: CPU time, no cgroup.
    let mut e = async_ev(0, 0, 5_000, 0, 300, HOW_FRAME_TRACEPOINT | ASYNC_LISTED);
    e.flags |= ASYNC_EMPTY | ASYNC_LAST;
    e.unthrottled = 0;
    e.csd_ns = 300;
    a.add_async(&e);
    // Listed counts are real without an unthrottle probe; no enqueue probe, no figure.
    let s7 = a.cgroup(7).unwrap().stats.asyncs().unwrap().clone();
    assert_eq!(
        (s7.unthrottled(), s7.enqueued(), s7.runnable()),
        (1, None, Some(3))
    );
    assert_eq!(s7.per_csd_ns().max(), 900);
    assert!(s7.flags() & ASYNC_LISTED != 0);
    assert!(a.cgroup(0).is_none(), "an empty CSD names no cgroup");
    let (_, c0) = a.cpus().next().unwrap();
    assert_eq!((c0.async_csds, c0.async_ns, c0.async_empty), (2, 1_200, 1));
    assert_eq!((a.async_csds(), a.async_empty()), (2, 1));
    assert!(
        a.warnings()
            .iter()
            .any(|w| w.contains("listed more than 32"))
    );
    // Replayed like any other line.
    let mut b = Aggregator::new();
    b.feed(&CaptureLine::AsyncUnthrottle(l));
    assert_eq!(b.async_events(), 1);
}

/// 2,000 cgroups (the LKML scale figure) whose every histogram has grown to its cap: the
/// worst case the bounds allow. Plus a realistic load for comparison.
#[test]
fn memory_bound_for_2000_cgroups() {
    let all = HOW_UNTHROTTLE | HOW_ENQUEUE_ENTITY | HOW_RUNNABLE | HOW_LOOPS;
    let mut worst = Aggregator::new();
    let mut typical = Aggregator::new();
    for id in 1..=2_000u64 {
        let mut p = period(id, (id % 4096) as u32, id, CALLBACK_NS_CAP);
        p.flags = all;
        p.unthrottled = COUNT_CAP as u32;
        p.enqueued = COUNT_CAP as u32;
        p.runnable = COUNT_CAP as u32;
        worst.add_period(&p);
        p.duration_ns = 1;
        worst.add_period(&p);
        // And async work on 6.3+: a CSD histogram grown to its cap, on a far CPU.
        let mut e = async_ev(id, ((id + 1) % 4096) as u32, id, 0, CALLBACK_NS_CAP, all);
        worst.add_async(&e);
        e.duration_ns = 1;
        worst.add_async(&e);
        // Every CPU of the bitmap in one period, and more period changes than are kept.
        let mut sp = period(id, 0, id + 1, 5);
        sp.flags = all | HOW_SPREAD;
        sp.spread_cpus = CpuSet::from_words(&[u64::MAX; tracer_ebpf::SPREAD_WORDS]);
        for k in 0..(MAX_PERIOD_CHANGES as u64 + 2) {
            sp.period_ns = 1_000_000 + k % 2;
            worst.add_period(&sp);
        }
        // 384 CPUs, 1-4 ms distributions, a few hundred enqueues.
        let mut q = period(id, (id % 384) as u32, id, 4_000_000);
        q.flags = all;
        q.unthrottled = 384;
        q.enqueued = 700;
        q.runnable = 500;
        typical.add_period(&q);
    }
    // Timer interrupts on 4096 CPUs with histograms grown to their caps.
    for cpu in 0..4096u32 {
        for (d, t) in [(CALLBACK_NS_CAP, COUNT_CAP as u32), (1, 1)] {
            worst.add_irq_span(&IrqSpanRecord {
                ts_ns: 1,
                cpu,
                duration_ns: d,
                timers: t,
                timers_ns: d,
                flags: 0,
            });
        }
    }
    let w = worst.approx_bytes();
    let t = typical.approx_bytes();
    eprintln!(
        "2000 cgroups: worst {} KB, typical {} KB",
        w / 1024,
        t / 1024
    );
    // About 25 KB a cgroup (spread and precursors included) plus under 4 KB a CPU for
    // timer-interrupt spans.
    assert!(w < 72 * 1024 * 1024, "worst case {w} bytes");
    assert!(t < 32 * 1024 * 1024, "typical {t} bytes");
}

fn in_span(mut p: PeriodRecord, span_ts: u64) -> PeriodRecord {
    p.flags |= HOW_IN_SPAN;
    p.span_ts_ns = span_ts;
    p
}

fn span(cpu: u32, ts: u64, dur: u64, timers: u32, timers_ns: u64) -> IrqSpanRecord {
    IrqSpanRecord {
        ts_ns: ts,
        cpu,
        duration_ns: dur,
        timers,
        timers_ns,
        flags: tracer_ebpf::HOW_FRAME_TRACEPOINT,
    }
}

#[test]
fn spans_learn_their_callbacks() {
    let mut a = Aggregator::new();
    // One interrupt on CPU 2 runs cgroup 7's timer twice and cgroup 8's once.
    a.add_period(&in_span(period(7, 2, 1_100, 300), 1_000));
    a.add_period(&in_span(period(8, 2, 1_450, 100), 1_000));
    a.add_period(&in_span(period(7, 2, 1_600, 200), 1_000));
    a.add_irq_span(&span(2, 1_000, 1_000, 3, 600));
    // A shorter one on CPU 2 with only cgroup 8.
    a.add_period(&in_span(period(8, 2, 5_100, 50), 5_000));
    a.add_irq_span(&span(2, 5_000, 400, 1, 50));
    // A span whose callbacks were never seen (lost lines): per-CPU figures only.
    a.add_irq_span(&span(3, 9_000, 2_000, 1, 1_500));
    // A callback outside any traced span.
    a.add_period(&period(9, 3, 20_000, 10));
    assert_eq!((a.irq_spans(), a.periods_in_span(), a.periods()), (3, 4, 5));
    let s2 = a.cpu_spans(2).unwrap();
    assert_eq!((s2.span_ns().count(), s2.span_ns().max()), (2, 1_000));
    assert_eq!(s2.timers_per_span().max(), 3);
    assert_eq!(s2.timers_ns(), 650);
    assert!((s2.timer_share() - 650.0 / 1_400.0).abs() < 1e-9);
    assert_eq!(s2.worst().ts_ns, 1_000);
    let w7 = *a.cgroup(7).unwrap().stats.worst_span().unwrap();
    assert_eq!(
        w7,
        CgroupSpan {
            cpu: 2,
            ts_ns: 1_000,
            duration_ns: 1_000,
            timers: 3,
            timers_ns: 600,
            own_timers: 2,
            own_ns: 500,
        }
    );
    // Cgroup 8's worst is the long shared interrupt, not its own short one.
    let w8 = a.cgroup(8).unwrap().stats.worst_span().copied().unwrap();
    assert_eq!((w8.duration_ns, w8.own_ns, w8.own_timers), (1_000, 100, 1));
    assert!(a.cgroup(9).unwrap().stats.worst_span().is_none());
    assert_eq!(a.worst_irq_span().unwrap().cpu, 3);
    // CPU 3 is listed for its span even though its callback is the only timer there.
    assert_eq!(a.cpus().map(|(c, _)| c).collect::<Vec<_>>(), vec![2, 3]);
    // Replayed like any line.
    let mut b = Aggregator::new();
    b.feed(&CaptureLine::IrqSpan(span(0, 1, 2, 1, 1)));
    assert_eq!(b.irq_spans(), 1);
}

#[test]
fn a_new_span_forgets_an_unclosed_one() {
    let mut a = Aggregator::new();
    a.add_period(&in_span(period(7, 0, 110, 10), 100));
    // The line of span 100 was lost; span 200 holds only cgroup 8.
    a.add_period(&in_span(period(8, 0, 210, 10), 200));
    a.add_irq_span(&span(0, 200, 50, 1, 10));
    assert!(a.cgroup(7).unwrap().stats.worst_span().is_none());
    assert_eq!(
        a.cgroup(8).unwrap().stats.worst_span().unwrap().duration_ns,
        50
    );
}

#[test]
fn spread_per_period_from_the_probe_and_the_csds() {
    use tracer_ebpf::{ASYNC_LAST, HOW_FRAME_FENTRY};
    let mut a = Aggregator::new();
    let mut p = period(7, 0, 1_000, 10);
    p.flags = HOW_UNTHROTTLE | HOW_SPREAD;
    p.spread_cpus = CpuSet::parse_list("0-2").unwrap();
    a.add_period(&p);
    // A CSD on CPU 5 after it belongs to that period; CPU 1 again adds nothing.
    let seg = HOW_FRAME_FENTRY | HOW_UNTHROTTLE | ASYNC_LAST;
    a.add_async(&async_ev(7, 5, 2_000, 0, 10, seg));
    a.add_async(&async_ev(7, 1, 2_500, 0, 10, seg));
    // Next period: only CPU 3, plus an overflow CPU from the kernel.
    p.ts_ns = 10_000;
    p.spread_cpus = CpuSet::parse_list("3").unwrap();
    p.spread_overflow = 2;
    a.add_period(&p);
    let sp = a.cgroup(7).unwrap().stats.spread().unwrap().clone();
    let d = sp.per_period();
    assert_eq!((d.count(), d.max(), d.min()), (2, 4, 1));
    assert_eq!(sp.cpus().iter().collect::<Vec<_>>(), vec![0, 1, 2, 3, 5]);
    assert_eq!(sp.overflow(), 2);
    assert_eq!(sp.sources(), SPREAD_FROM_PROBE | SPREAD_FROM_CSD);
    // The open period is not counted twice when asked again.
    assert_eq!(sp.per_period().count(), 2);
    // A CSD before the cgroup's first callback has no period to go to.
    a.add_async(&async_ev(9, 4, 50, 0, 10, seg));
    let s9 = a.cgroup(9).unwrap().stats.spread().unwrap();
    assert_eq!((s9.unplaced_csds(), s9.per_period().count()), (1, 0));
    assert_eq!(s9.cpus().iter().collect::<Vec<_>>(), vec![4]);
}

#[test]
fn spread_without_the_probe_uses_the_timer_cpu() {
    let mut a = Aggregator::new();
    let mut p = period(7, 1, 1_000, 10);
    p.flags = HOW_RUNNABLE;
    p.runnable = 3;
    a.add_period(&p);
    p.ts_ns = 2_000;
    p.runnable = 0;
    a.add_period(&p);
    let sp = a.cgroup(7).unwrap().stats.spread().unwrap().clone();
    let d = sp.per_period();
    assert_eq!((d.count(), d.min(), d.max()), (2, 0, 1));
    assert_eq!(sp.sources(), SPREAD_FROM_TIMER_CPU);
    // Unresolved callbacks have no spread.
    a.add_period(&period(0, 0, 5, 1));
    assert!(a.cgroup(0).unwrap().stats.spread().is_none());
}

#[test]
fn precursors_are_counted() {
    let mut a = Aggregator::new();
    let mut p = period(7, 0, 1_000, 500_000);
    p.flags = HOW_PERIOD | HOW_LOOPS;
    p.period_ns = 1_000_000;
    p.quota_ns = 500_000;
    p.loops = 1;
    a.add_period(&p);
    assert!(a.cgroup(7).unwrap().stats.precursors().is_none());
    // Overran its period with 3 passes; then the kernel doubled the period.
    p.ts_ns = 2_000;
    p.duration_ns = 1_200_000;
    p.loops = 3;
    a.add_period(&p);
    p.ts_ns = 3_000;
    p.duration_ns = 10;
    p.loops = 1;
    p.period_ns = 2_000_000;
    p.quota_ns = 1_000_000;
    a.add_period(&p);
    let pr = a.cgroup(7).unwrap().stats.precursors().unwrap().clone();
    assert_eq!((pr.over_period(), pr.multi_pass()), (1, 1));
    assert_eq!(
        pr.changes(),
        &[PeriodChange {
            ts_ns: 3_000,
            cpu: 0,
            from_ns: 1_000_000,
            to_ns: 2_000_000,
            from_quota_ns: 500_000,
            to_quota_ns: 1_000_000,
        }]
    );
    // A callback without the period read is no change.
    p.period_ns = 0;
    a.add_period(&p);
    assert_eq!(
        a.cgroup(7)
            .unwrap()
            .stats
            .precursors()
            .unwrap()
            .changes()
            .len(),
        1
    );
    // Messages and file periods are kept for the report.
    a.feed(&CaptureLine::KmsgPeriodScaling(PeriodScaling {
        ts_us: 3,
        cpu: 0,
        scaled_up: true,
        period_us: 2_000,
        quota_us: 1_000,
    }));
    assert_eq!(a.kmsgs().len(), 1);
    let mut n = named(7, Some("/x"));
    n.facts.period_us = Some(1_000);
    a.add_cgroup(n.clone());
    n.facts.period_us = Some(2_000);
    a.add_cgroup(n.clone());
    a.add_cgroup(n);
    assert_eq!(a.file_periods(7), &[1_000, 2_000]);
    assert!(a.file_periods(8).is_empty());
}
