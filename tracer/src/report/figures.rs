//! `figures`: which figures this run measured, how, and in words why not. A figure is there
//! when its probe attached and some event carried its `HOW_*` bit; the capture header says
//! what attached, the events say what worked.
use tracer_ebpf::{
    HOW_ENQUEUE_ENTITY, HOW_ENQUEUE_TASK_FAIR, HOW_LOOPS, HOW_QUEUED, HOW_RUNNABLE, HOW_SPREAD,
    HOW_UNTHROTTLE,
};

use super::model::{Figure, Figures};
use crate::analysis::Aggregator;
use crate::capture::{CaptureHeader, ProbeStatus};
use crate::model::probe::Probe;

/// `kprobe unthrottle_cfs_rq`: the style and what it sits on.
pub fn probe_how(p: &ProbeStatus) -> Option<String> {
    match (&p.how, &p.target) {
        (Some(h), Some(t)) => Some(format!("{h} {t}")),
        (Some(h), None) => Some(h.to_string()),
        (None, Some(t)) => Some(t.clone()),
        (None, None) => None,
    }
}

/// The probe's own reason for not attaching, or a plain one.
fn not_attached(s: &ProbeStatus, probe: Probe) -> String {
    s.reason
        .clone()
        .unwrap_or_else(|| format!("the {probe} probe was not attached"))
}

/// A count figure is available when some event carried its `HOW_*` bit.
fn count_figure(
    header: &CaptureHeader,
    flags: u32,
    bits: u32,
    probe: Probe,
    fallback_how: &str,
    periods: u64,
) -> Figure {
    let status = header.probes.get(&probe);
    let available = flags & bits != 0;
    let how = status
        .filter(|s| s.attached)
        .and_then(probe_how)
        .or_else(|| available.then(|| fallback_how.to_string()));
    let reason = match status {
        // Attached but degraded (e.g. counting `enqueue_task_fair`): keep the note.
        _ if available => status.and_then(|s| s.reason.clone()),
        Some(s) if !s.attached => Some(not_attached(s, probe)),
        Some(_) if periods == 0 => {
            Some("probe attached, but no period-timer callback was seen".to_string())
        }
        Some(_) => Some("probe attached, but no event carried its count".to_string()),
        None => Some(format!("the capture lists no {probe} probe")),
    };
    Figure {
        available,
        how,
        reason,
    }
}

/// Tasks released per period: the unthrottle probe plus a BTF field (renamed in 6.14, so
/// found by name, never by version).
fn queued_figure(flags: u32, unthrottled: &Figure) -> Figure {
    if flags & HOW_QUEUED != 0 {
        return Figure {
            available: true,
            how: Some("cfs_rq.h_nr_queued (h_nr_running before 6.14) at unthrottle_cfs_rq".into()),
            reason: None,
        };
    }
    let reason = if unthrottled.available {
        "the kernel's BTF has neither cfs_rq.h_nr_queued nor cfs_rq.h_nr_running".to_string()
    } else {
        format!(
            "needs the unthrottle probe: {}",
            unthrottled.reason.as_deref().unwrap_or_default()
        )
    };
    Figure {
        available: false,
        how: None,
        reason: Some(reason),
    }
}

/// A frame of its own (the async-unthrottle CSD, the timer interrupt): measured when it
/// attached, or when a capture without the probe list holds its `events`. `idle` says why an
/// attached frame saw nothing, when that needs saying.
fn frame_figure(
    header: &CaptureHeader,
    probe: Probe,
    events: u64,
    fallback_how: &str,
    idle: impl FnOnce(&ProbeStatus) -> Option<String>,
) -> Figure {
    let status = header.probes.get(&probe);
    let attached = status.is_some_and(|s| s.attached);
    let how = status
        .filter(|s| s.attached)
        .and_then(probe_how)
        .or_else(|| (events > 0).then(|| fallback_how.to_string()));
    let reason = match status {
        Some(s) if !s.attached => Some(not_attached(s, probe)),
        Some(s) => idle(s).or_else(|| s.reason.clone()),
        None if events > 0 => None,
        None => Some(format!(
            "the capture lists no {probe} probe (recorded by an older cfstrace)"
        )),
    };
    Figure {
        available: attached || events > 0,
        how,
        reason,
    }
}

/// Async unthrottle (6.3+): the work the period timer left to CSDs on other CPUs.
fn async_figure(header: &CaptureHeader, agg: &Aggregator) -> Figure {
    let events = agg.async_events();
    frame_figure(
        header,
        Probe::AsyncUnthrottle,
        events,
        "__cfsb_csd_unthrottle",
        |s| {
            const NONE: &str = "no CSD ran: every unthrottle happened on the timer's own CPU";
            (events == 0).then(|| match &s.reason {
                Some(r) => format!("{NONE}; {r}"),
                None => NONE.to_string(),
            })
        },
    )
}

/// Timer-interrupt spans around the callbacks.
fn irq_span_figure(header: &CaptureHeader, agg: &Aggregator) -> Figure {
    let spans = agg.irq_spans();
    frame_figure(header, Probe::IrqSpan, spans, "hrtimer_interrupt", |_| {
        (spans == 0 && agg.periods() > 0).then(|| {
            "attached, but no period-timer callback ran inside a traced timer interrupt \
             (a low-resolution timer mode runs hrtimers from the tick, outside \
             hrtimer_interrupt)"
                .to_string()
        })
    })
}

/// Per-period spread: exact where the callback's unthrottles are probed (plus the CSDs that
/// finish its work on 6.3+), partial where only the CSDs are seen.
fn spread_figure(header: &CaptureHeader, agg: &Aggregator, async_fig: &Figure) -> Figure {
    let flags = agg.flags_seen();
    let csds = async_fig.available;
    if flags & HOW_SPREAD != 0 {
        return Figure {
            available: true,
            how: Some(format!(
                "unthrottle_cfs_rq inside the callback (cfs_rq->rq->cpu){}",
                if csds {
                    " + the CPUs of the async-unthrottle CSDs until its next callback"
                } else {
                    ""
                }
            )),
            reason: None,
        };
    }
    let why_no_probe = if flags & HOW_UNTHROTTLE != 0 {
        "unthrottle_cfs_rq is probed but the BTF lacks cfs_rq.rq or rq.cpu".to_string()
    } else {
        match header.probes.get(&Probe::Unthrottle) {
            Some(s) if !s.attached => format!(
                "unthrottle_cfs_rq is not probed ({})",
                s.reason.as_deref().unwrap_or("not attached")
            ),
            Some(_) => "unthrottle_cfs_rq is probed but no callback carried the CPUs".to_string(),
            None => "the capture lists no unthrottle probe".to_string(),
        }
    };
    if csds {
        return Figure {
            available: true,
            how: Some(
                "the CPUs of the async-unthrottle CSDs until the timer's next callback + the \
                 timer's own CPU when its callback made tasks runnable"
                    .to_string(),
            ),
            reason: Some(format!(
                "{why_no_probe}: the figure covers the remote CPUs the CSDs reached (listed \
                 mode: up to {} cfs_rqs a CSD) and the timer's CPU, not cfs_rqs the callback \
                 unthrottled elsewhere",
                tracer_ebpf::MAX_LISTED
            )),
        };
    }
    Figure {
        available: false,
        how: None,
        reason: Some(format!(
            "{why_no_probe}, and no async-unthrottle CSD frame: on which CPUs cgroups were \
             throttled is not known"
        )),
    }
}

/// The kernel's "period too short" messages: read from /dev/kmsg while recording.
fn kmsg_figure(header: &CaptureHeader, agg: &Aggregator) -> Figure {
    let reason = match header.probes.get(&Probe::Kmsg) {
        Some(s) if s.attached => {
            return Figure {
                available: true,
                how: probe_how(s),
                reason: s.reason.clone(),
            };
        }
        Some(s) => s
            .reason
            .clone()
            .unwrap_or_else(|| "/dev/kmsg was not read".to_string()),
        None => "the capture lists no kmsg reader (recorded by an older cfstrace)".to_string(),
    };
    Figure {
        available: !agg.kmsgs().is_empty(),
        how: None,
        reason: Some(reason),
    }
}

/// The period-timer callback's own time: there whenever the frame attached or callbacks are.
fn callback_figure(header: &CaptureHeader, periods: u64) -> Figure {
    let timer = header.probes.get(&Probe::PeriodTimer);
    Figure {
        available: timer.is_some_and(|s| s.attached) || periods > 0,
        how: timer
            .and_then(probe_how)
            .or_else(|| Some(header.backend.to_string())),
        reason: match timer {
            Some(s) => s.reason.clone(),
            None if periods == 0 => Some("the capture lists no period_timer probe".to_string()),
            None => None,
        },
    }
}

/// Every figure of the run.
pub(crate) fn figures(header: &CaptureHeader, agg: &Aggregator) -> Figures {
    let flags = agg.flags_seen();
    let n = agg.periods();
    let count =
        |bits, probe, fallback_how| count_figure(header, flags, bits, probe, fallback_how, n);
    let enqueue_fallback = if flags & HOW_ENQUEUE_TASK_FAIR != 0 {
        "enqueue_task_fair"
    } else {
        "enqueue_entity"
    };
    let unthrottled = count(HOW_UNTHROTTLE, Probe::Unthrottle, "unthrottle_cfs_rq");
    let async_unthrottle = async_figure(header, agg);
    Figures {
        callback_ns: callback_figure(header, n),
        loops: count(HOW_LOOPS, Probe::Distribute, "distribute_cfs_runtime"),
        queued: queued_figure(flags, &unthrottled),
        unthrottled,
        enqueued: count(
            HOW_ENQUEUE_ENTITY | HOW_ENQUEUE_TASK_FAIR,
            Probe::Enqueue,
            enqueue_fallback,
        ),
        runnable: count(HOW_RUNNABLE, Probe::Runnable, "sched_update_nr_running_tp"),
        spread: spread_figure(header, agg, &async_unthrottle),
        async_unthrottle,
        irq_span: irq_span_figure(header, agg),
        kernel_messages: kmsg_figure(header, agg),
    }
}

#[cfg(test)]
mod tests {
    use tracer_ebpf::HOW_FRAME_TRACEPOINT;

    use super::*;
    use crate::model::workload::WorkloadKind;
    use crate::report::fixtures::*;
    use crate::report::{Report, build_report};

    #[test]
    fn availability_and_reasons() {
        let r = build_report(&header(), &agg(), 1, vec![]);
        let f = &r.figures;
        assert!(f.callback_ns.available);
        assert_eq!(
            f.callback_ns.how.as_deref(),
            Some("tracepoint hrtimer_expire_entry/exit")
        );
        assert!(f.unthrottled.available);
        assert_eq!(
            f.unthrottled.how.as_deref(),
            Some("kprobe unthrottle_cfs_rq")
        );
        assert_eq!(f.unthrottled.reason, None);
        assert!(!f.enqueued.available);
        assert_eq!(
            f.enqueued.reason.as_deref(),
            Some("kprobes are not available (CONFIG_KPROBES off)")
        );
        assert!(!f.loops.available);
        assert_eq!(f.loops.reason.as_deref(), Some("no kprobes"));
        // Attached, but no event said it counted.
        assert!(!f.runnable.available);
        assert_eq!(
            f.runnable.reason.as_deref(),
            Some("probe attached, but no event carried its count")
        );
        for c in &r.cgroups {
            assert!(c.unthrottled_per_period.is_some());
            assert!(c.enqueued_per_period.is_none());
            assert!(c.runnable_per_period.is_none());
            assert!(c.max_loops.is_none());
        }
    }

    #[test]
    fn no_count_figures_without_their_flags() {
        let mut a = Aggregator::new();
        let mut p = rec(20, 0, 0, 5_000, 9);
        p.flags = HOW_FRAME_TRACEPOINT;
        a.add_period(&p);
        let r = build_report(&header(), &a, 1, vec![]);
        assert!(!r.figures.unthrottled.available);
        let c = &r.cgroups[0];
        assert_eq!(c.unthrottled_per_period, None);
        // Never named: kind cgroup, no path, a note.
        assert_eq!(c.path, None);
        assert_eq!(c.workload.kind, WorkloadKind::Cgroup);
        assert!(c.note.as_deref().unwrap().contains("never named"));
        let v = serde_json::to_value(&r).unwrap();
        assert!(v["cgroups"][0]["unthrottled_per_period"].is_null());
        assert!(!r.culprit.as_ref().unwrap().reason.contains("unthrottled"));
    }

    #[test]
    fn async_unthrottle_unavailable_or_absent() {
        // Pre-6.3: the probe says why; no cgroup has the figure.
        let mut h = header();
        h.probes.insert(
            Probe::AsyncUnthrottle,
            ProbeStatus::not_attached(
                "__cfsb_csd_unthrottle is not in /proc/kallsyms: this kernel unthrottles remote \
                 cfs_rqs inside the period timer (pre-6.3)",
            ),
        );
        let r = build_report(&h, &agg(), 1, vec![]);
        let f = &r.figures.async_unthrottle;
        assert!(!f.available);
        assert!(reason(f).contains("pre-6.3"), "{f:?}");
        assert!(r.cgroups.iter().all(|c| c.async_unthrottle.is_none()));
        assert!(!r.culprit.unwrap().reason.contains("asynchronously"));
        // Attached, but every unthrottle stayed on the timer's CPU.
        let r = build_report(&async_header(), &agg(), 1, vec![]);
        assert!(r.figures.async_unthrottle.available);
        let f = &r.figures.async_unthrottle;
        assert!(reason(f).starts_with("no CSD ran"), "{f:?}");
        // A capture from before this probe existed.
        let r = build_report(&header(), &agg(), 1, vec![]);
        let f = &r.figures.async_unthrottle;
        assert!(reason(f).contains("older cfstrace"), "{f:?}");
        // A report JSON from before the async fields still reads.
        let mut v = serde_json::to_value(&r).unwrap();
        v["figures"]
            .as_object_mut()
            .unwrap()
            .remove("async_unthrottle");
        v["events"].as_object_mut().unwrap().remove("async_csds");
        v["cgroups"][0]
            .as_object_mut()
            .unwrap()
            .remove("async_unthrottle");
        v["cpus"][0].as_object_mut().unwrap().remove("async_ns");
        let back: Report = serde_json::from_value(v).unwrap();
        assert_eq!(back.cgroups[0].async_unthrottle, None);
    }
}
