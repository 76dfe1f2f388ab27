//! `build_report`: an [`Aggregator`] (a replayed capture or one `watch` interval) and the
//! capture header's facts in, the `cfstrace.report/1` document out.
use super::cgroup::{Ctx, cgroup_report};
use super::figures::figures;
use super::headroom::{cpu_candidates, cpu_reports, headroom, worst_of};
use super::model::{Busiest, CgroupReport, Culprit, Events, Report, WorstIrqsOff};
use super::precursors::Evidence;
use super::prose::{culprit_headline, culprit_reason};
use super::{DEFAULT_HIGHLIGHT_PCT, REPORT_SCHEMA};
use crate::analysis::{Aggregator, UNRESOLVED_ID, UNRESOLVED_NAME};
use crate::model::host::HostFacts;
use crate::model::probe::Probe;
use crate::model::records::CaptureHeader;

/// Assemble the report. `duration_ns` is the recording's length; `warnings` are the capture's.
pub fn build_report(
    header: &CaptureHeader,
    agg: &Aggregator,
    duration_ns: u64,
    warnings: Vec<String>,
) -> Report {
    let host = &header.host;
    let thresh = host.watchdog.thresh_s;
    let figs = figures(header, agg);
    let kmsg_read = header.probes.get(&Probe::Kmsg).is_some_and(|p| p.attached);
    let evidence = Evidence::new(agg, kmsg_read, figs.loops.available);
    let cgroups = cgroup_reports(
        agg,
        &Ctx {
            figs: &figs,
            thresh_s: thresh,
            ncpus: host.ncpus,
            evidence: &evidence,
        },
    );
    let precursors = Some(evidence.node(&cgroups));
    // Node: the worst of every CPU's worst.
    let worst_irqs_off = worst_of(agg.cpus().flat_map(|(cpu, s)| cpu_candidates(agg, cpu, s)));
    let culprit = culprit(&cgroups, host, worst_irqs_off.as_ref());
    let forecast = super::forecast::forecast(
        agg.forecast(),
        &figs,
        &cgroups,
        thresh,
        worst_irqs_off.as_ref(),
    );
    let events = events(agg);
    let warnings = report_warnings(warnings, agg, &events, figs.irq_span.available, host);
    let mut report = Report {
        schema: REPORT_SCHEMA.to_string(),
        tool_version: env!("CARGO_PKG_VERSION").to_string(),
        hostname: host.hostname.clone(),
        kernel: host.kernel.clone(),
        ncpus: host.ncpus,
        backend: header.backend,
        backend_requested: header.backend_requested,
        probes: header.probes.clone(),
        watchdog: host.watchdog.clone(),
        duration_s: duration_ns as f64 / 1e9,
        events,
        figures: figs,
        cgroups,
        cpus: cpu_reports(agg, thresh),
        headroom_ns: worst_irqs_off
            .as_ref()
            .and_then(|w| headroom(thresh, w.duration_ns)),
        headroom_basis: worst_irqs_off.as_ref().map(|w| w.basis),
        worst_irqs_off,
        headroom_alert: None,
        gate: None,
        precursors,
        culprit,
        forecast: Some(forecast),
        warnings,
    };
    report.set_highlight_under(DEFAULT_HIGHLIGHT_PCT);
    report
}

/// Every cgroup, worst first: by IRQs-off time, then worst callback, then id.
fn cgroup_reports(agg: &Aggregator, ctx: &Ctx<'_>) -> Vec<CgroupReport> {
    let mut cgroups: Vec<CgroupReport> = agg.cgroups().map(|v| cgroup_report(&v, ctx)).collect();
    cgroups.sort_by(|a, b| {
        b.total_callback_ns
            .cmp(&a.total_callback_ns)
            .then(b.callback_ns.max.cmp(&a.callback_ns.max))
            .then(a.id.cmp(&b.id))
    });
    cgroups
}

/// The cgroup that drives the node toward the watchdog threshold ([`Culprit`]): the longest
/// IRQs-off span its timers ran in, then its own part of it, then its total. Unresolved
/// callbacks are no actionable culprit while a named cgroup is in the running.
fn culprit(
    cgroups: &[CgroupReport],
    host: &HostFacts,
    node_worst: Option<&WorstIrqsOff>,
) -> Option<Culprit> {
    let named = || {
        cgroups
            .iter()
            .filter(|c| c.id != UNRESOLVED_ID && c.periods > 0)
    };
    let any = || cgroups.iter().filter(|c| c.periods > 0);
    let key = |c: &&CgroupReport| {
        (
            c.worst_irqs_off_ns(),
            c.own_worst_ns(),
            c.total_callback_ns,
            std::cmp::Reverse(c.id),
        )
    };
    let c = named().max_by_key(key).or_else(|| any().max_by_key(key))?;
    // `cgroups` is in the table's order: by total first.
    let busiest = named()
        .next()
        .or_else(|| any().next())
        .filter(|b| b.id != c.id)
        .map(|b| Busiest {
            id: b.id,
            path: b.path.clone(),
            total_callback_ns: b.total_callback_ns,
            worst_irqs_off_ns: b.worst_irqs_off_ns(),
        });
    Some(Culprit {
        headline: culprit_headline(c, node_worst),
        reason: culprit_reason(c, &host.watchdog, node_worst, busiest.as_ref()),
        cgroup: c.clone(),
        busiest_by_total: busiest,
    })
}

fn events(agg: &Aggregator) -> Events {
    let loss = agg.loss().copied().unwrap_or_default();
    Events {
        periods: agg.periods(),
        lost: loss.lost().max(agg.end().map_or(0, |e| e.lost)),
        ringbuf_full: loss.ringbuf_full,
        unmatched_exit: loss.unmatched_exit,
        missed_exit: loss.missed_exit,
        cgroup_read: loss.cgroup_read,
        async_unthrottle: agg.async_events(),
        async_csds: agg.async_csds(),
        async_empty: agg.async_empty(),
        csd_unmatched_exit: loss.csd_unmatched_exit,
        csd_missed_exit: loss.csd_missed_exit,
        irq_spans: agg.irq_spans(),
        periods_in_span: agg.periods_in_span(),
        span_unmatched_exit: loss.span_unmatched_exit,
        span_missed_exit: loss.span_missed_exit,
        periods_unsent: agg.unsent_periods(),
        unsent_full: loss.unsent_full,
        partial: false,
    }
    .marked()
}

impl Events {
    /// `partial` set from the losses.
    fn marked(mut self) -> Self {
        self.partial = self.lost > 0 || self.unsent_full > 0;
        self
    }
}

/// Why a report's figures are partial (`events.partial`), or None when no event was lost:
/// the first warning, and the line under the text report's head.
pub fn partial_reason(e: &Events) -> Option<String> {
    if !e.partial {
        return None;
    }
    let mut why = format!(
        "partial figures: {} event(s) lost (the ring buffer was full; a larger --ring-buffer \
         keeps more): figures counted from events are a lower bound",
        e.lost
    );
    if e.periods_unsent > 0 {
        why.push_str(&format!(
            "; {} of them were period-timer callbacks, counted back from the kernel's own sums: \
             callback counts, IRQs-off totals, each cgroup's worst callback and each CPU's worst \
             span stay exact, their quantiles are approximate (log2 buckets)",
            e.periods_unsent
        ));
    }
    if e.unsent_full > 0 {
        why.push_str(&format!(
            "; {} lost callback(s) could not be summed in the kernel either (its map was full): \
             the callback counts undercount by that much",
            e.unsent_full
        ));
    }
    Some(why)
}

/// The capture's warnings, the aggregation's, then what the losses and the host mean for the
/// figures; each once.
fn report_warnings(
    capture: Vec<String>,
    agg: &Aggregator,
    events: &Events,
    spans_traced: bool,
    host: &HostFacts,
) -> Vec<String> {
    let mut all = capture;
    all.extend(agg.warnings());
    all.extend(loss_warnings(events));
    if spans_traced && agg.irq_spans() > 0 && agg.periods_in_span() < agg.periods() {
        all.push(format!(
            "{} of {} callbacks ran outside a traced timer interrupt: their own time stands in \
             for the interrupt's",
            agg.periods() - agg.periods_in_span(),
            agg.periods()
        ));
    }
    if let Some(e) = agg.end().filter(|e| e.periods > agg.periods()) {
        all.push(format!(
            "the end line counts {} callbacks but only {} are in the capture",
            e.periods,
            agg.periods()
        ));
    }
    if host.watchdog.thresh_s.is_none() {
        all.push("watchdog_thresh could not be read: no headroom figures".to_string());
    } else if !host.watchdog.enabled {
        all.push(
            "the hard-lockup watchdog is disabled on this node: headroom is measured against \
             watchdog_thresh all the same"
                .to_string(),
        );
    }
    let mut warnings = Vec::with_capacity(all.len());
    for w in all {
        if !warnings.contains(&w) {
            warnings.push(w);
        }
    }
    warnings
}

/// What lost or half-seen events do to the figures.
fn loss_warnings(e: &Events) -> Vec<String> {
    let mut w: Vec<String> = partial_reason(e).into_iter().collect();
    if e.cgroup_read > 0 {
        w.push(format!(
            "{} timer -> cgroup read(s) failed: those callbacks are under {UNRESOLVED_NAME}",
            e.cgroup_read
        ));
    }
    if e.missed_exit > 0 || e.unmatched_exit > 0 {
        w.push(format!(
            "{} callback end(s) missed, {} end(s) without a start: a few durations are missing",
            e.missed_exit, e.unmatched_exit
        ));
    }
    if e.csd_missed_exit > 0 || e.csd_unmatched_exit > 0 {
        w.push(format!(
            "{} async-unthrottle CSD end(s) missed (their events lost), {} end(s) without a start",
            e.csd_missed_exit, e.csd_unmatched_exit
        ));
    }
    if e.span_missed_exit > 0 || e.span_unmatched_exit > 0 {
        w.push(format!(
            "{} timer-interrupt span end(s) missed, {} end(s) without a start: a few spans are \
             missing",
            e.span_missed_exit, e.span_unmatched_exit
        ));
    }
    w
}
