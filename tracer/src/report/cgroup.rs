//! One cgroup's report: its naming record, callback statistics (only the figures the run
//! measured), headroom, async-unthrottle work, spread and precursors, with notes that explain
//! what looks odd.
use tracer_ebpf::ASYNC_LISTED;

use super::headroom::headroom;
use super::model::{
    AsyncReport, BASIS_CALLBACK, BASIS_SPAN, CgroupReport, Figures, SpanShare, SpreadReport, Stats,
};
use super::precursors::Evidence;
use super::prose::human_ns;
use crate::analysis::asyncs::AsyncStats;
use crate::analysis::spread::{
    SPREAD_FROM_CSD, SPREAD_FROM_PROBE, SPREAD_FROM_TIMER_CPU, SpreadStats,
};
use crate::analysis::{CgroupView, Distribution, UNRESOLVED_ID, UNRESOLVED_NAME};
use crate::model::records::CgroupFacts;

/// Everything a cgroup's report needs besides its own stats.
pub(crate) struct Ctx<'a> {
    pub figs: &'a Figures,
    pub thresh_s: Option<u64>,
    pub ncpus: u32,
    pub evidence: &'a Evidence<'a>,
}

/// The workload of a cgroup never named.
fn async_report(a: &AsyncStats) -> AsyncReport {
    let d = a.per_csd_ns();
    AsyncReport {
        csds: a.csds(),
        unthrottled: a.unthrottled(),
        per_csd_ns: (d.count() > 0).then(|| Stats::of(d)),
        cpus: a.cpus().iter().collect(),
        total_ns: d.sum(),
        enqueued: a.enqueued(),
        runnable: a.runnable(),
        attribution: if a.flags() & ASYNC_LISTED != 0 {
            "listed".to_string()
        } else {
            "segments".to_string()
        },
    }
}

fn spread_report(sp: &SpreadStats, ncpus: u32) -> SpreadReport {
    let st = Stats::of(&sp.per_period());
    let union = sp.cpus().len();
    let sources = [
        (SPREAD_FROM_PROBE, "unthrottle_cfs_rq"),
        (SPREAD_FROM_CSD, "async_csd"),
        (SPREAD_FROM_TIMER_CPU, "timer_cpu"),
    ]
    .into_iter()
    .filter(|(bit, _)| sp.sources() & bit != 0)
    .map(|(_, name)| name.to_string())
    .collect();
    SpreadReport {
        per_period: st,
        cpus: sp.cpus().iter().collect(),
        ncpus: union,
        summary: spread_summary(&st, ncpus, union, sp.sources()),
        sources,
        overflow: sp.overflow(),
    }
}

/// The spread in words, each figure named for what it is so that none reads as another: the
/// worst period's CPUs of the node's, the median period's, the run's, and what they were seen
/// from (a source that sees few unthrottles makes a low median).
fn spread_summary(st: &Stats, ncpus: u32, union: u32, sources: u32) -> String {
    let seen: Vec<&str> = [
        (SPREAD_FROM_PROBE, "unthrottle_cfs_rq"),
        (SPREAD_FROM_CSD, "async CSDs"),
        (SPREAD_FROM_TIMER_CPU, "the timer's CPU"),
    ]
    .into_iter()
    .filter(|(bit, _)| sources & bit != 0)
    .map(|(_, name)| name)
    .collect();
    format!(
        "throttled on {} of {ncpus} CPUs in its worst period (median period {}; {union} over \
         the run; seen from {})",
        st.max,
        st.p50,
        seen.join(" and ")
    )
}

/// What looks odd about a cgroup, in words: why it has no name, whether the kernel rescaled
/// its period, whether its timer overran.
fn notes(v: &CgroupView<'_>) -> Option<String> {
    let s = v.stats;
    let cb = s.callback_ns();
    let mut notes: Vec<String> = Vec::new();
    if let Some(n) = v.record.and_then(|r| r.note.clone()) {
        notes.push(n);
    }
    if v.id == UNRESOLVED_ID {
        notes.push(format!(
            "{UNRESOLVED_NAME}: callbacks whose timer could not be traced to a cgroup \
             (a failed kernel read, or the kernel layout lacks a field)"
        ));
    } else if v.record.is_none() {
        notes.push(
            "never named: the cgroup went away (or could not be read) before its path was"
                .to_string(),
        );
    }
    if let Some((lo, hi)) = s.period_change() {
        notes.push(format!(
            "the kernel's period changed during the run ({} -> {}): after a callback overran \
             its period the kernel scales period and quota up",
            human_ns(lo),
            human_ns(hi)
        ));
    }
    if let Some(l) = s.max_loops().filter(|&l| l > 1) {
        notes.push(format!(
            "{l} distribute passes in one callback: the timer overran its period and looped"
        ));
    }
    if let Some(p) = s.period_ns().filter(|&p| p > 0 && cb.max() >= p) {
        notes.push(format!(
            "worst callback {} is at least the cfs period {}: the timer cannot keep up",
            human_ns(cb.max()),
            human_ns(p)
        ));
    }
    (!notes.is_empty()).then(|| notes.join("; "))
}

pub(crate) fn cgroup_report(v: &CgroupView<'_>, ctx: &Ctx<'_>) -> CgroupReport {
    let figs = ctx.figs;
    let s = v.stats;
    let cb = s.callback_ns();
    let counted = |avail: bool, d: Option<&Distribution>| d.filter(|_| avail).map(Stats::of);
    let rec = v.record;
    // The span that held its callback is the IRQs-off time the watchdog saw; a callback
    // outside any recorded span still counts on its own.
    let (worst_ns, basis) = match s.worst_span() {
        Some(w) if w.duration_ns >= cb.max() => (w.duration_ns, BASIS_SPAN),
        _ => (cb.max(), BASIS_CALLBACK),
    };
    CgroupReport {
        facts: rec.map_or_else(|| CgroupFacts::unnamed(v.id), |r| r.facts.clone()),
        parents: rec.and_then(|r| r.parents.clone()),
        periods: s.periods(),
        total_callback_ns: s.total_callback_ns(),
        callback_ns: Stats::of(cb),
        unthrottled_per_period: counted(figs.unthrottled.available, s.unthrottled()),
        enqueued_per_period: counted(figs.enqueued.available, s.enqueued()),
        queued_per_period: counted(figs.queued.available, s.queued()),
        runnable_per_period: counted(figs.runnable.available, s.runnable()),
        max_loops: s.max_loops().filter(|_| figs.loops.available),
        cpus: s.cpus().iter().collect(),
        headroom_ns: headroom(ctx.thresh_s, worst_ns),
        headroom_basis: (s.periods() > 0).then_some(basis),
        worst_irq_span: s.worst_span().map(SpanShare::from),
        kernel_period_us: s.period_ns().filter(|&p| p > 0).map(|p| p / 1_000),
        kernel_quota_us: s
            .quota_ns()
            .filter(|&q| q != u64::MAX && q > 0)
            .map(|q| q / 1_000),
        note: notes(v),
        async_unthrottle: s
            .asyncs()
            .filter(|_| figs.async_unthrottle.available)
            .map(async_report),
        spread: s
            .spread()
            .filter(|_| figs.spread.available && s.periods() > 0)
            .map(|sp| spread_report(sp, ctx.ncpus)),
        precursors: ctx.evidence.cgroup(v),
    }
}

#[cfg(test)]
mod tests {
    use crate::report::build_report;
    use crate::report::fixtures::*;

    #[test]
    fn spread_like_runq_g() {
        let r = build_report(&header(), &spread_agg(), 1, vec![]);
        assert!(r.figures.spread.available);
        assert_eq!(
            r.figures.spread.how.as_deref(),
            Some("unthrottle_cfs_rq inside the callback (cfs_rq->rq->cpu)")
        );
        let sp = r.cgroups[0].spread.clone().unwrap();
        assert_eq!(
            (sp.per_period.max, sp.per_period.min, sp.per_period.count),
            (46, 40, 4)
        );
        assert_eq!(sp.ncpus, 47);
        assert_eq!(sp.cpus.len(), 47);
        assert_eq!(sp.sources, vec!["unthrottle_cfs_rq".to_string()]);
        assert_eq!(
            sp.summary,
            "throttled on 46 of 48 CPUs in its worst period (median period 40; 47 over the run; \
             seen from unthrottle_cfs_rq)"
        );
        let why = &r.culprit.as_ref().unwrap().reason;
        assert!(
            why.contains("; throttled on 46 of 48 CPUs in its worst period"),
            "{why}"
        );
        let v = serde_json::to_value(&r).unwrap();
        let spread = "per_period cpus ncpus summary sources";
        fields(&v, "/cgroups/0/spread", spread, |_| true);

        // The probe counted but the BTF gave no CPUs, and no CSD frame: unavailable, said why.
        let r = build_report(&header(), &agg(), 1, vec![]);
        assert!(!r.figures.spread.available);
        let f = &r.figures.spread;
        assert!(reason(f).contains("lacks cfs_rq.rq or rq.cpu"), "{f:?}");
        assert!(r.cgroups.iter().all(|c| c.spread.is_none()));
        // Tracepoint-only 6.3+: the CSDs' CPUs, with the caveat.
        let r = build_report(&async_header(), &async_agg(), 1, vec![]);
        assert!(r.figures.spread.available);
        let f = &r.figures.spread;
        assert!(reason(f).contains("covers the remote CPUs"), "{f:?}");
        let sp = r.cgroups[0].spread.clone().unwrap();
        assert_eq!(sp.sources, vec!["async_csd".to_string()]);
        assert_eq!(sp.cpus, vec![1, 2]);
    }
}
