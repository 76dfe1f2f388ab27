//! `cfstrace watch --prometheus ADDR`: a /metrics endpoint in the OpenMetrics text format
//! (1.0.0, which Prometheus reads natively), encoded by the `prometheus-client` crate, in the
//! manner of cloudflare/ebpf_exporter: real histograms (`_bucket{le=...}` cumulative up to
//! `+Inf`, `_sum`, `_count`) that only ever grow over the run, per-cgroup series labelled by the
//! cgroup's path and workload ids, gauges for the watchdog's headroom and counters for events
//! and losses. Histogram buckets are read from each series' hdrhistogram
//! ([`Distribution`]).
//!
//! Cardinality is bounded: the first `--max-cgroups` cgroups (ranked by IRQs-off time in the
//! interval they first show up in) keep their own series for the whole run; every other cgroup
//! is summed into one `cgroup="other"` series. Membership never changes once decided, so every
//! series (`other` included) only grows, as counters and histograms must.
//!
//! The watch loop feeds capture lines into [`Metrics`] and renders a [`Bytes`] body at the end
//! of each interval into a [`Snapshot`]; the server ([`serve`], or [`bind`] and [`Server::run`]
//! on any tokio runtime) answers every scrape with that body, shared, never copied.
use std::collections::{BTreeMap, BTreeSet, HashMap};

use crate::model::bounded::{Bounded, IdMap};
use std::fmt::{self, Write as _};

use bytes::Bytes;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{
    DescriptorEncoder, EncodeLabel as _, EncodeLabelSet, EncodeLabelValue, EncodeMetric,
    LabelSetEncoder, LabelValueEncoder, NoLabelSet,
};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::{MetricType, TypedMetric};
use prometheus_client::registry::Registry;
use regex::Regex;

use crate::analysis::Distribution;
use crate::analysis::UNRESOLVED_ID;
use crate::model::cpuset::CpuSet;
use crate::model::records::{
    CaptureLine, CgroupRecord, LossRecord, PeriodRecord, PeriodScaling, UnsentPeriodsRecord,
};
use crate::model::workload::{Workload, WorkloadKind, classify};
use crate::report::{Report, cgroup_name};

mod http;
pub use http::{Server, Snapshot, bind, parse_listen_addr};

/// The content type of what [`Metrics::render`] writes (prometheus-client's text encoder).
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// `--max-cgroups` when not given.
pub const DEFAULT_MAX_CGROUPS: usize = 50;

/// The `cgroup` label of the series every cgroup beyond `--max-cgroups` is summed into. Real
/// cgroup paths start with `/`, so it never collides with one.
pub const OTHER: &str = "other";

/// Upper bounds (ns) of the time buckets: 1, 2.5 and 5 of every decade from 1 us to 10 s (the
/// watchdog's default threshold), the spacing Prometheus' own client libraries use.
fn time_bounds() -> Vec<u64> {
    (3..=10)
        .flat_map(|e| [10, 25, 50].map(|m| m * 10u64.pow(e) / 10))
        .filter(|&b| b <= 10_000_000_000)
        .collect()
}

/// Upper bounds of the per-period count buckets (cfs_rqs unthrottled by one callback): 0, then
/// powers of two to 4096.
fn count_bounds() -> Vec<u64> {
    std::iter::once(0).chain((0..=12).map(|p| 1 << p)).collect()
}

/// A histogram's bucket layout: bounds in recorded units (for the hdrhistogram) and as shown
/// (`le`, in the metric's unit).
#[derive(Clone, Debug)]
struct Layout {
    bounds: Vec<u64>,
    le: Vec<f64>,
    /// Recorded units per shown unit (1e9 for ns shown as seconds).
    scale: f64,
}

impl Layout {
    fn new(bounds: Vec<u64>, scale: f64) -> Self {
        // Dividing the exact integer keeps the shortest spelling (2500/1e9 prints as 2.5e-6).
        let le = bounds.iter().map(|&b| b as f64 / scale).collect();
        Layout { bounds, le, scale }
    }

    fn time() -> Self {
        Self::new(time_bounds(), 1e9)
    }

    fn counts() -> Self {
        Self::new(count_bounds(), 1.0)
    }

    /// One series' samples from its distribution.
    fn sample(&self, labels: &Labels, d: &Distribution) -> HistSample {
        let counts = d.bucket_counts(&self.bounds);
        // prometheus-client takes per-bucket counts (it accumulates them) and f64::MAX as +Inf.
        let buckets = self
            .le
            .iter()
            .copied()
            .chain([f64::MAX])
            .zip(counts)
            .collect();
        HistSample {
            labels: labels.clone(),
            sum: d.sum() as f64 / self.scale,
            count: d.count(),
            buckets,
        }
    }
}

/// A label value escaped as the format requires: backslash, double quote and line feed become
/// `\\`, `\"` and `\n`; nothing else is escaped. prometheus-client 0.24 writes `&str` label
/// values as given, so a cgroup name could otherwise close the label or start a new line.
struct Escaped<'a>(&'a str);

impl EncodeLabelValue for Escaped<'_> {
    fn encode(&self, e: &mut LabelValueEncoder) -> fmt::Result {
        let mut rest = self.0;
        while let Some(i) = rest.find(['\\', '"', '\n']) {
            e.write_str(&rest[..i])?;
            e.write_str(match rest.as_bytes()[i] {
                b'\\' => "\\\\",
                b'"' => "\\\"",
                _ => "\\n",
            })?;
            rest = &rest[i + 1..];
        }
        e.write_str(rest)
    }
}

/// A series' label set: names and raw values, escaped when encoded.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Labels(Vec<(&'static str, String)>);

impl Labels {
    fn one(name: &'static str, value: impl ToString) -> Self {
        Labels(vec![(name, value.to_string())])
    }
}

impl EncodeLabelSet for Labels {
    fn encode(&self, encoder: &mut LabelSetEncoder) -> fmt::Result {
        for (k, v) in &self.0 {
            (*k, Escaped(v)).encode(encoder.encode_label())?;
        }
        Ok(())
    }
}

fn kind_str(k: WorkloadKind) -> &'static str {
    match k {
        WorkloadKind::Yarn => "yarn",
        WorkloadKind::Kubernetes => "kubernetes",
        WorkloadKind::Docker => "docker",
        WorkloadKind::Podman => "podman",
        WorkloadKind::Systemd => "systemd",
        WorkloadKind::Cgroup => "cgroup",
    }
}

/// The label set of a cgroup's series: its path and workload ids (empty when it has none).
pub fn cgroup_labels(path: &str, w: &Workload) -> Labels {
    let id = |v: &Option<String>| v.clone().unwrap_or_default();
    Labels(vec![
        ("cgroup", path.to_string()),
        ("kind", kind_str(w.kind).to_string()),
        ("application", id(&w.application)),
        ("container", id(&w.container)),
        ("pod_uid", id(&w.pod_uid)),
        ("unit", id(&w.unit)),
    ])
}

/// `other` is no one workload: every label but `cgroup` empty, `kind` included.
fn other_labels() -> Labels {
    let empty = ["kind", "application", "container", "pod_uid", "unit"].map(|n| (n, String::new()));
    Labels(
        [("cgroup", OTHER.to_string())]
            .into_iter()
            .chain(empty)
            .collect(),
    )
}

/// A cgroup's lockup precursors, counted as the report counts them
/// ([`crate::analysis::precursors`]): callbacks that took at least the period the kernel had
/// at that callback, callbacks of more than one distribute pass, changes of the period between
/// two callbacks of one timer, and the kernel's "period too short, scaling up" messages
/// attributed to its timer.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct PrecursorCounts {
    over_period: u64,
    multi_pass: u64,
    period_changed: u64,
    period_scaled: u64,
}

impl PrecursorCounts {
    /// Each precursor's `precursor` label and count, in exposition order.
    fn by_kind(&self) -> [(&'static str, u64); 4] {
        [
            ("over_period", self.over_period),
            ("multi_pass", self.multi_pass),
            ("period_changed", self.period_changed),
            ("period_scaled", self.period_scaled),
        ]
    }

    fn merge(&mut self, o: &PrecursorCounts) {
        self.over_period += o.over_period;
        self.multi_pass += o.multi_pass;
        self.period_changed += o.period_changed;
        self.period_scaled += o.period_scaled;
    }
}

/// One cgroup's (or `other`'s) histograms, precursor counts and period.
#[derive(Clone, Debug)]
struct Series {
    labels: Labels,
    callback: Distribution,
    unthrottled: Distribution,
    precursors: PrecursorCounts,
    /// `cfs_bandwidth.period` at its last callback that carried one (never shown for `other`,
    /// which is no one cgroup).
    period_ns: Option<u64>,
}

impl Series {
    fn new(labels: Labels) -> Self {
        Series {
            labels,
            callback: Distribution::callback(),
            unthrottled: Distribution::counts(),
            precursors: PrecursorCounts::default(),
            period_ns: None,
        }
    }

    /// One callback; `changed`: its period differs from the previous callback's of the same
    /// timer.
    fn observe(&mut self, p: &PeriodRecord, changed: bool) {
        self.callback.record(p.duration_ns);
        if let Some(n) = p.counted_unthrottled() {
            self.unthrottled.record(u64::from(n));
        }
        if p.period_ns > 0 {
            self.period_ns = Some(p.period_ns);
            if p.duration_ns >= p.period_ns {
                self.precursors.over_period += 1;
            }
        }
        if p.counted_loops().is_some_and(|n| n > 1) {
            self.precursors.multi_pass += 1;
        }
        if changed {
            self.precursors.period_changed += 1;
        }
    }

    fn merge(&mut self, o: &Series) {
        self.callback.merge(&o.callback);
        self.unthrottled.merge(&o.unthrottled);
        self.precursors.merge(&o.precursors);
    }

    /// IRQs-off time, to rank cgroups waiting for a slot.
    fn total_ns(&self) -> u64 {
        self.callback.sum()
    }
}

/// One histogram series as encoded: per-bucket counts (`+Inf` as `f64::MAX`), sum, count.
#[derive(Debug)]
struct HistSample {
    labels: Labels,
    sum: f64,
    count: u64,
    buckets: Vec<(f64, u64)>,
}

/// A family's name and help.
type Family = (&'static str, &'static str);

const CALLBACK: Family = (
    "cfstrace_callback_seconds",
    "IRQs-off time of each CFS bandwidth period-timer callback (sched_cfs_period_timer), by the \
     cgroup whose timer it was.",
);
const UNTHROTTLED: Family = (
    "cfstrace_unthrottled_per_period",
    "cfs_rqs one period-timer callback unthrottled, by cgroup.",
);
const IRQ_SPAN: Family = (
    "cfstrace_irq_span_seconds",
    "IRQs-off time of each timer interrupt that ran period timers, by CPU.",
);
const THRESH: Family = (
    "cfstrace_watchdog_thresh_seconds",
    "The hard-lockup watchdog's threshold (kernel.watchdog_thresh).",
);
const HEADROOM: Family = (
    "cfstrace_headroom_seconds",
    "watchdog_thresh minus the worst IRQs-off span of the node in the last interval.",
);
const HEADROOM_MIN: Family = (
    "cfstrace_headroom_min_seconds",
    "The lowest node headroom of any interval since cfstrace started.",
);
const CPU_HEADROOM: Family = (
    "cfstrace_cpu_headroom_seconds",
    "watchdog_thresh minus the CPU's worst IRQs-off span in the last interval.",
);
const PERIOD: Family = (
    "cfstrace_cgroup_period_seconds",
    "The cgroup's CFS bandwidth period (cfs_bandwidth.period) as the kernel had it at its last \
     period-timer callback.",
);
// Counters are named without `_total`: the encoder appends it to the samples.
const PRECURSORS: Family = (
    "cfstrace_cgroup_precursors",
    "Lockup precursors of the cgroup's period timer since cfstrace started, by precursor: \
     over_period (a callback took at least its period), multi_pass (more than one distribute \
     pass in a callback), period_changed (the period differed from the previous callback's), \
     period_scaled (a kernel \"period too short, scaling up\" message for its timer).",
);
const EVENTS: Family = (
    "cfstrace_events",
    "Events traced since cfstrace started, by kind.",
);
const LOST: Family = (
    "cfstrace_lost_events",
    "Events lost (ringbuf_full) or degraded (a start or an end missed, a cgroup read failed) \
     since cfstrace started, by reason.",
);

/// What one render shows, taken from [`Metrics`] at the end of an interval and handed to
/// prometheus-client as a collector (families written in this order, absent ones skipped).
#[derive(Debug)]
struct Exposition {
    callback: Vec<HistSample>,
    /// None until the kernel has given an unthrottled count.
    unthrottled: Option<Vec<HistSample>>,
    spans: Vec<HistSample>,
    /// Per cgroup (not `other`): its period in seconds.
    periods: Vec<(Labels, f64)>,
    /// Per series and precursor.
    precursors: Vec<(Labels, u64)>,
    thresh_s: Option<i64>,
    headroom_s: Option<f64>,
    headroom_min_s: Option<f64>,
    cpu_headroom_s: Vec<(Labels, f64)>,
    events: Vec<(Labels, u64)>,
    lost: Vec<(Labels, u64)>,
}

fn histograms(
    enc: &mut DescriptorEncoder,
    (name, help): Family,
    rows: &[HistSample],
) -> fmt::Result {
    let mut m = enc.encode_descriptor(name, help, None, MetricType::Histogram)?;
    for s in rows {
        m.encode_family(&s.labels)?
            .encode_histogram::<NoLabelSet>(s.sum, s.count, &s.buckets, None)?;
    }
    Ok(())
}

/// A family of one metric type, one sample a label set.
fn labelled<M: EncodeMetric + TypedMetric>(
    enc: &mut DescriptorEncoder,
    (name, help): Family,
    rows: impl IntoIterator<Item = (Labels, M)>,
) -> fmt::Result {
    let mut m = enc.encode_descriptor(name, help, None, M::TYPE)?;
    for (labels, metric) in rows {
        metric.encode(m.encode_family(&labels)?)?;
    }
    Ok(())
}

/// A family of one unlabelled sample, written only when the value is known.
fn single<M: EncodeMetric + TypedMetric>(
    enc: &mut DescriptorEncoder,
    (name, help): Family,
    metric: Option<M>,
) -> fmt::Result {
    match metric {
        Some(m) => m.encode(enc.encode_descriptor(name, help, None, M::TYPE)?),
        None => Ok(()),
    }
}

impl Collector for Exposition {
    fn encode(&self, mut enc: DescriptorEncoder) -> fmt::Result {
        histograms(&mut enc, CALLBACK, &self.callback)?;
        if let Some(u) = &self.unthrottled {
            histograms(&mut enc, UNTHROTTLED, u)?;
        }
        if !self.spans.is_empty() {
            histograms(&mut enc, IRQ_SPAN, &self.spans)?;
        }
        if !self.periods.is_empty() {
            let rows = self.periods.iter();
            labelled(
                &mut enc,
                PERIOD,
                rows.map(|(l, v)| (l.clone(), ConstGauge::new(*v))),
            )?;
        }
        if !self.precursors.is_empty() {
            let rows = self.precursors.iter();
            labelled(
                &mut enc,
                PRECURSORS,
                rows.map(|(l, n)| (l.clone(), ConstCounter::new(*n))),
            )?;
        }
        single(&mut enc, THRESH, self.thresh_s.map(ConstGauge::new))?;
        single(&mut enc, HEADROOM, self.headroom_s.map(ConstGauge::new))?;
        single(
            &mut enc,
            HEADROOM_MIN,
            self.headroom_min_s.map(ConstGauge::new),
        )?;
        if !self.cpu_headroom_s.is_empty() {
            let rows = self.cpu_headroom_s.iter();
            labelled(
                &mut enc,
                CPU_HEADROOM,
                rows.map(|(l, v)| (l.clone(), ConstGauge::new(*v))),
            )?;
        }
        let counters = |rows: &[(Labels, u64)]| {
            rows.iter()
                .map(|(l, n)| (l.clone(), ConstCounter::new(*n)))
                .collect::<Vec<_>>()
        };
        labelled(&mut enc, EVENTS, counters(&self.events))?;
        labelled(&mut enc, LOST, counters(&self.lost))
    }
}

fn seconds(ns: i64) -> f64 {
    ns as f64 / 1e9
}

/// One cgroup's period timer as the precursors need it: its period at the last callback, the
/// CPUs it fired on and its IRQs-off time (to attribute a kernel message to it).
#[derive(Debug, Default)]
struct Timer {
    period_ns: u64,
    cpus: CpuSet,
    total_ns: u64,
}

/// Intervals a kernel "period too short" message waits for its cgroup's timer to show the new
/// period (the next callback, one new period later: up to the kernel's 1 s cap) before it is
/// dropped unattributed.
const KMSG_TRIES: u8 = 3;

/// Kernel messages kept waiting at most (a message storm cannot grow memory).
const MAX_PENDING_KMSGS: usize = 1024;

/// Everything /metrics shows, cumulative since `watch` started (gauges: the last interval).
#[derive(Debug)]
pub struct Metrics {
    max_cgroups: usize,
    filter: Option<Regex>,
    // The per-id maps are bounded (`MAX_TRACKED`, least recently used out): a forgotten cgroup
    // seen again is keyed by its path again, so its series stays the same.
    /// Cgroup naming lines by id.
    records: IdMap<CgroupRecord>,
    /// Id -> series key (its path, fixed at its first callback).
    keys: IdMap<String>,
    /// Cgroups with their own series, in the order they got them.
    slots: Vec<Series>,
    slot_of: HashMap<String, usize>,
    /// Seen this interval, not yet given a slot or folded.
    pending: HashMap<String, Series>,
    /// Keys summed into `other`; one forgotten and seen again is folded again.
    folded: Bounded<String, ()>,
    other: Series,
    unthrottle_seen: bool,
    spans: BTreeMap<u32, Distribution>,
    periods: u64,
    async_events: u64,
    irq_spans: u64,
    loss: LossRecord,
    thresh_s: Option<u64>,
    headroom_ns: Option<i64>,
    headroom_min_ns: Option<i64>,
    cpus_seen: BTreeSet<u32>,
    cpu_headroom_ns: BTreeMap<u32, i64>,
    time: Layout,
    counts: Layout,
    /// Per cgroup id: its timer's period, CPUs and time.
    timers: IdMap<Timer>,
    /// Per cgroup id: its last `unsent_periods` line's sums (they are cumulative).
    unsent: IdMap<UnsentPeriodsRecord>,
    /// Some callback carried a real distribute-pass count (`HOW_LOOPS`): `multi_pass` is shown.
    loops_seen: bool,
    /// "period too short, scaling up" messages not yet attributed, with the tries left.
    kmsgs: Vec<(PeriodScaling, u8)>,
}

impl Metrics {
    /// `filter`: only cgroups whose path matches get their own series (`--cgroup`); the rest
    /// are summed into `other` like those beyond `max_cgroups`.
    pub fn new(max_cgroups: usize, filter: Option<Regex>) -> Self {
        Metrics {
            max_cgroups,
            filter,
            records: IdMap::default(),
            keys: IdMap::default(),
            slots: Vec::new(),
            slot_of: HashMap::new(),
            pending: HashMap::new(),
            folded: Bounded::default(),
            other: Series::new(other_labels()),
            unthrottle_seen: false,
            spans: BTreeMap::new(),
            periods: 0,
            async_events: 0,
            irq_spans: 0,
            loss: LossRecord::default(),
            thresh_s: None,
            headroom_ns: None,
            headroom_min_ns: None,
            cpus_seen: BTreeSet::new(),
            cpu_headroom_ns: BTreeMap::new(),
            time: Layout::time(),
            counts: Layout::counts(),
            timers: IdMap::default(),
            unsent: IdMap::default(),
            loops_seen: false,
            kmsgs: Vec::new(),
        }
    }

    /// The series cgroup `id`'s figures go to: its own, `other`, or one waiting for a slot.
    fn series_mut(&mut self, id: u64) -> &mut Series {
        let key = self.key(id);
        if self.folded.contains(&key) {
            return &mut self.other;
        }
        if let Some(&i) = self.slot_of.get(&key) {
            return &mut self.slots[i];
        }
        let w = (self.records.get(&id))
            .map(|r| r.workload.clone())
            .unwrap_or_else(|| classify(&key));
        let labels = cgroup_labels(&key, &w);
        self.pending
            .entry(key)
            .or_insert_with(|| Series::new(labels))
    }

    /// Give each waiting kernel message to the timer it is about: a cgroup whose timer fired
    /// on the message's CPU and now runs at the message's new period (the busiest if several;
    /// the report's rule for a message no period change explains). A message no timer fits
    /// yet waits for the next interval, [`KMSG_TRIES`] times at most.
    fn attribute_kmsgs(&mut self) {
        let kmsgs = std::mem::take(&mut self.kmsgs);
        for (m, tries) in kmsgs {
            let new_ns = m.period_us.saturating_mul(1_000);
            let owner = (self.timers.iter())
                .filter(|(id, t)| {
                    **id != UNRESOLVED_ID && t.period_ns == new_ns && t.cpus.contains(m.cpu)
                })
                .max_by_key(|(id, t)| (t.total_ns, std::cmp::Reverse(**id)))
                .map(|(id, _)| *id);
            match owner {
                Some(id) => self.series_mut(id).precursors.period_scaled += 1,
                None if tries > 1 => self.kmsgs.push((m, tries - 1)),
                None => {}
            }
        }
    }

    fn key(&mut self, id: u64) -> String {
        if let Some(k) = self.keys.get(&id) {
            return k.clone();
        }
        let path = self.records.get(&id).and_then(|r| r.path.as_deref());
        let k = cgroup_name(id, path).into_owned();
        self.keys.insert(id, k.clone());
        k
    }

    pub fn feed(&mut self, line: &CaptureLine) {
        match line {
            CaptureLine::Cgroup(c) => {
                // A later record without a path never replaces one with a path.
                if c.path.is_some() || !self.records.contains(&c.id) {
                    self.records.insert(c.id, (**c).clone());
                }
            }
            CaptureLine::Period(p) => {
                self.periods += 1;
                self.unthrottle_seen |= p.counted_unthrottled().is_some();
                self.loops_seen |= p.counted_loops().is_some();
                let t = self.timers.get_or_insert_mut(p.cgroup_id, Timer::default);
                // The period as the kernel had it, against this timer's previous callback.
                let changed = p.cgroup_id != UNRESOLVED_ID
                    && p.period_ns > 0
                    && t.period_ns > 0
                    && t.period_ns != p.period_ns;
                if p.period_ns > 0 {
                    t.period_ns = p.period_ns;
                }
                t.cpus.insert(p.cpu);
                t.total_ns = t.total_ns.saturating_add(p.duration_ns);
                self.series_mut(p.cgroup_id).observe(p, changed);
            }
            CaptureLine::UnsentPeriods(u) => {
                // Callbacks whose events were lost, as the kernel summed them: their precursor
                // counts stay exact (the histograms hold only the callbacks decoded).
                let prev = self.unsent.insert(u.id, u.clone());
                let before = prev.map(|p| p.sums).unwrap_or_default();
                let over = u.sums.over_period.saturating_sub(before.over_period);
                let multi = u.sums.multi_pass.saturating_sub(before.multi_pass);
                self.loops_seen |= u.sums.max_loops > 0;
                let pr = &mut self.series_mut(u.id).precursors;
                pr.over_period += over;
                pr.multi_pass += multi;
            }
            CaptureLine::KmsgPeriodScaling(m) => {
                // "period too short, but cannot scale up" changed nothing: not counted.
                if m.scaled_up && self.kmsgs.len() < MAX_PENDING_KMSGS {
                    self.kmsgs.push((m.clone(), KMSG_TRIES));
                }
            }
            CaptureLine::IrqSpan(x) => {
                self.irq_spans += 1;
                self.spans
                    .entry(x.cpu)
                    .or_insert_with(Distribution::callback)
                    .record(x.duration_ns);
            }
            CaptureLine::AsyncUnthrottle(_) => self.async_events += 1,
            CaptureLine::Loss(_) | CaptureLine::CpuTotals(_) | CaptureLine::End(_) => {}
        }
    }

    /// Give the cgroups first seen this interval a series of their own (busiest first, while
    /// slots last and `--cgroup` matches) or fold them into `other` for good.
    pub fn settle(&mut self) {
        let mut pending: Vec<(String, Series)> = self.pending.drain().collect();
        pending.sort_by(|a, b| b.1.total_ns().cmp(&a.1.total_ns()).then(a.0.cmp(&b.0)));
        for (key, series) in pending {
            let wanted = self.filter.as_ref().is_none_or(|re| re.is_match(&key));
            if wanted && self.slots.len() < self.max_cgroups {
                self.slot_of.insert(key, self.slots.len());
                self.slots.push(series);
            } else {
                self.other.merge(&series);
                self.folded.insert(key, ());
            }
        }
    }

    /// End of an interval: settle new cgroups, take the loss counters (cumulative, as the
    /// session reads them) and the interval's headroom gauges from its node-wide report.
    pub fn end_interval(&mut self, report: &Report, loss: LossRecord) {
        self.attribute_kmsgs();
        self.settle();
        self.loss = loss;
        self.thresh_s = report.watchdog.thresh_s;
        let thresh_ns = self.thresh_s.map(|t| t as i64 * 1_000_000_000);
        // Nothing held IRQs off this interval: the whole threshold is left.
        self.headroom_ns = report.headroom_ns.or(thresh_ns);
        if let Some(h) = report.headroom_ns {
            self.headroom_min_ns = Some(self.headroom_min_ns.map_or(h, |m| m.min(h)));
        }
        self.cpus_seen.extend(report.cpus.iter().map(|c| c.cpu));
        self.cpu_headroom_ns.clear();
        for &cpu in &self.cpus_seen {
            let h = report
                .cpus
                .iter()
                .find(|c| c.cpu == cpu)
                .and_then(|c| c.headroom_ns)
                .or(thresh_ns);
            if let Some(h) = h {
                self.cpu_headroom_ns.insert(cpu, h);
            }
        }
    }

    /// Cgroups with a series of their own (not counting `other`).
    pub fn cgroup_series(&self) -> usize {
        self.slots.len()
    }

    /// The exposition, encoded once for every scrape until the next interval.
    pub fn render(&self) -> Bytes {
        let mut registry = Registry::default();
        registry.register_collector(Box::new(self.exposition()));
        let mut text = String::new();
        // Only the writer can fail, and a String never does.
        prometheus_client::encoding::text::encode(&mut text, &registry)
            .expect("encoding into a String cannot fail");
        Bytes::from(text)
    }

    /// The figures one render shows.
    fn exposition(&self) -> Exposition {
        // `other` shows once something is folded into it, and then for good.
        let series: Vec<&Series> = self
            .slots
            .iter()
            .chain((!self.folded.is_empty()).then_some(&self.other))
            .collect();
        let hists = |layout: &Layout, d: fn(&Series) -> &Distribution| {
            let rows = series.iter().map(|s| layout.sample(&s.labels, d(s)));
            rows.collect::<Vec<_>>()
        };
        let cpu = |cpu: &u32| Labels::one("cpu", cpu);
        let loops_seen = self.loops_seen;
        let precursors = (series.iter())
            .flat_map(|s| {
                (s.precursors.by_kind().into_iter())
                    // multi_pass only where the kernel side counts passes.
                    .filter(move |(k, _)| loops_seen || *k != "multi_pass")
                    .map(|(k, n)| {
                        let mut labels = s.labels.clone();
                        labels.0.push(("precursor", k.to_string()));
                        (labels, n)
                    })
            })
            .collect();
        Exposition {
            periods: (self.slots.iter())
                .filter_map(|s| Some((s.labels.clone(), seconds(s.period_ns? as i64))))
                .collect(),
            precursors,
            callback: hists(&self.time, |s| &s.callback),
            unthrottled: self
                .unthrottle_seen
                .then(|| hists(&self.counts, |s| &s.unthrottled)),
            spans: (self.spans.iter())
                .map(|(c, d)| self.time.sample(&cpu(c), d))
                .collect(),
            thresh_s: self.thresh_s.map(|t| t as i64),
            headroom_s: self.headroom_ns.map(seconds),
            headroom_min_s: self.headroom_min_ns.map(seconds),
            cpu_headroom_s: (self.cpu_headroom_ns.iter())
                .map(|(c, &h)| (cpu(c), seconds(h)))
                .collect(),
            events: [
                ("period_callback", self.periods),
                ("async_unthrottle", self.async_events),
                ("irq_span", self.irq_spans),
            ]
            .into_iter()
            .map(|(kind, n)| (Labels::one("kind", kind), n))
            .collect(),
            lost: (self.loss.counters().into_iter())
                .map(|(reason, n)| (Labels::one("reason", reason), n))
                .collect(),
        }
    }
}

#[cfg(test)]
mod tests;
