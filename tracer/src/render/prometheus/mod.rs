//! `cfstrace watch --prometheus ADDR`: a /metrics endpoint in the Prometheus text exposition
//! format (version 0.0.4), in the manner of cloudflare/ebpf_exporter: real histograms
//! (`_bucket{le=...}` cumulative up to `+Inf`, `_sum`, `_count`) that only ever grow over the
//! run, per-cgroup series labelled by the cgroup's path and workload ids, gauges for the
//! watchdog's headroom and counters for events and losses.
//!
//! Cardinality is bounded: the first `--max-cgroups` cgroups (ranked by IRQs-off time in the
//! interval they first show up in) keep their own series for the whole run; every other cgroup
//! is summed into one `cgroup="other"` series. Membership never changes once decided, so every
//! series (`other` included) only grows, as counters and histograms must.
//!
//! The watch loop feeds capture lines into [`Metrics`] and renders a snapshot at the end of
//! each interval; a thread ([`serve`]) answers scrapes with the latest snapshot.
use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::fmt::Write as _;

use regex::Regex;

use crate::model::records::{CaptureLine, CgroupRecord, LossRecord, PeriodRecord};
use crate::model::workload::{Workload, WorkloadKind, classify};
use crate::report::{Report, cgroup_name};

mod http;
pub use http::{Snapshot, parse_listen_addr, respond, serve};

/// The content type of the text format this module writes.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// `--max-cgroups` when not given.
pub const DEFAULT_MAX_CGROUPS: usize = 50;

/// The `cgroup` label of the series every cgroup beyond `--max-cgroups` is summed into. Real
/// cgroup paths start with `/`, so it never collides with one.
pub const OTHER: &str = "other";

/// Upper bounds (ns) of the time buckets and their `le` spelling (seconds): 1 us to 10 s, the
/// watchdog's default threshold.
const TIME_BUCKETS: &[(u64, &str)] = &[
    (1_000, "1e-06"),
    (2_500, "2.5e-06"),
    (5_000, "5e-06"),
    (10_000, "1e-05"),
    (25_000, "2.5e-05"),
    (50_000, "5e-05"),
    (100_000, "0.0001"),
    (250_000, "0.00025"),
    (500_000, "0.0005"),
    (1_000_000, "0.001"),
    (2_500_000, "0.0025"),
    (5_000_000, "0.005"),
    (10_000_000, "0.01"),
    (25_000_000, "0.025"),
    (50_000_000, "0.05"),
    (100_000_000, "0.1"),
    (250_000_000, "0.25"),
    (1_000_000_000, "1"),
    (2_500_000_000, "2.5"),
    (5_000_000_000, "5"),
    (10_000_000_000, "10"),
];

/// Upper bounds of the per-period count buckets (cfs_rqs unthrottled by one callback).
const COUNT_BUCKETS: &[(u64, &str)] = &[
    (0, "0"),
    (1, "1"),
    (2, "2"),
    (4, "4"),
    (8, "8"),
    (16, "16"),
    (32, "32"),
    (64, "64"),
    (128, "128"),
    (256, "256"),
    (512, "512"),
    (1024, "1024"),
    (4096, "4096"),
];

/// Escape a label value as the text format requires: backslash, double quote and line feed
/// become `\\`, `\"` and `\n`. Nothing else needs escaping (or may be escaped).
pub fn escape_label_value(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
    out
}

/// `name="value",...` with every value escaped.
fn label_set(pairs: &[(&str, &str)]) -> String {
    let mut s = String::new();
    for (i, (k, v)) in pairs.iter().enumerate() {
        if i > 0 {
            s.push(',');
        }
        let _ = write!(s, "{k}=\"{}\"", escape_label_value(v));
    }
    s
}

/// A fixed-bucket histogram: per-bucket counts (the last one is above every bound), sum and
/// count. Exposed cumulatively.
#[derive(Clone, Debug, PartialEq)]
pub struct Hist {
    bounds: &'static [(u64, &'static str)],
    counts: Vec<u64>,
    sum: u64,
    count: u64,
}

impl Hist {
    fn new(bounds: &'static [(u64, &'static str)]) -> Self {
        Hist {
            bounds,
            counts: vec![0; bounds.len() + 1],
            sum: 0,
            count: 0,
        }
    }

    pub fn time() -> Self {
        Self::new(TIME_BUCKETS)
    }

    pub fn counts() -> Self {
        Self::new(COUNT_BUCKETS)
    }

    /// `le` semantics: a value equal to a bound is in that bound's bucket.
    pub fn observe(&mut self, v: u64) {
        let i = self.bounds.partition_point(|&(b, _)| b < v);
        self.counts[i] += 1;
        self.sum = self.sum.saturating_add(v);
        self.count += 1;
    }

    pub fn merge(&mut self, o: &Hist) {
        debug_assert!(std::ptr::eq(self.bounds, o.bounds));
        for (a, b) in self.counts.iter_mut().zip(&o.counts) {
            *a += b;
        }
        self.sum = self.sum.saturating_add(o.sum);
        self.count += o.count;
    }

    pub fn count(&self) -> u64 {
        self.count
    }

    /// (`le`, cumulative count) for every bound, then `+Inf` (== count).
    pub fn cumulative(&self) -> Vec<(&'static str, u64)> {
        let mut acc = 0;
        let mut out: Vec<(&'static str, u64)> = self
            .bounds
            .iter()
            .zip(&self.counts)
            .map(|(&(_, le), &c)| {
                acc += c;
                (le, acc)
            })
            .collect();
        out.push(("+Inf", acc + self.counts[self.bounds.len()]));
        out
    }

    /// Samples of one series: buckets, `_sum` (divided by `scale`), `_count`.
    fn write(&self, o: &mut String, name: &str, labels: &str, scale: f64) {
        let sep = if labels.is_empty() { "" } else { "," };
        for (le, c) in self.cumulative() {
            let _ = writeln!(o, "{name}_bucket{{{labels}{sep}le=\"{le}\"}} {c}");
        }
        let sum = if scale == 1.0 {
            self.sum.to_string()
        } else {
            float(self.sum as f64 / scale)
        };
        let braces = |s: &str| {
            if s.is_empty() {
                String::new()
            } else {
                format!("{{{s}}}")
            }
        };
        let _ = writeln!(o, "{name}_sum{} {sum}", braces(labels));
        let _ = writeln!(o, "{name}_count{} {}", braces(labels), self.count);
    }
}

/// A float as the text format reads it (Go's ParseFloat; Rust's shortest round-trip form).
fn float(v: f64) -> String {
    if v.is_finite() {
        format!("{v}")
    } else if v.is_nan() {
        "NaN".into()
    } else if v > 0.0 {
        "+Inf".into()
    } else {
        "-Inf".into()
    }
}

fn seconds(ns: i64) -> String {
    float(ns as f64 / 1e9)
}

/// `# HELP` and `# TYPE` of a metric family.
fn family(o: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(o, "# HELP {name} {help}");
    let _ = writeln!(o, "# TYPE {name} {kind}");
}

/// A family (`[name, kind, help]`) with the samples of each CPU, labelled `cpu`.
fn by_cpu<V>(
    o: &mut String,
    [name, kind, help]: [&str; 3],
    rows: &BTreeMap<u32, V>,
    sample: impl Fn(&mut String, &str, &V),
) {
    family(o, name, kind, help);
    for (cpu, v) in rows {
        sample(o, &label_set(&[("cpu", &cpu.to_string())]), v);
    }
}

/// A gauge family of one unlabelled sample.
fn gauge(o: &mut String, name: &str, help: &str, value: &str) {
    family(o, name, "gauge", help);
    let _ = writeln!(o, "{name} {value}");
}

/// One cgroup's (or `other`'s) histograms.
#[derive(Clone, Debug)]
struct Series {
    /// Rendered, escaped label set.
    labels: String,
    callback: Hist,
    unthrottled: Hist,
    /// IRQs-off time, to rank cgroups waiting for a slot.
    total_ns: u64,
}

impl Series {
    fn new(labels: String) -> Self {
        Series {
            labels,
            callback: Hist::time(),
            unthrottled: Hist::counts(),
            total_ns: 0,
        }
    }

    fn observe(&mut self, p: &PeriodRecord) {
        self.callback.observe(p.duration_ns);
        self.total_ns = self.total_ns.saturating_add(p.duration_ns);
        if let Some(n) = p.counted_unthrottled() {
            self.unthrottled.observe(u64::from(n));
        }
    }

    fn merge(&mut self, o: &Series) {
        self.callback.merge(&o.callback);
        self.unthrottled.merge(&o.unthrottled);
        self.total_ns = self.total_ns.saturating_add(o.total_ns);
    }
}

fn kind_str(k: WorkloadKind) -> &'static str {
    match k {
        WorkloadKind::Yarn => "yarn",
        WorkloadKind::Kubernetes => "kubernetes",
        WorkloadKind::Docker => "docker",
        WorkloadKind::Systemd => "systemd",
        WorkloadKind::Cgroup => "cgroup",
    }
}

/// The label set of a cgroup's series: its path and workload ids (empty when it has none).
pub fn cgroup_labels(path: &str, w: &Workload) -> String {
    label_set(&[
        ("cgroup", path),
        ("kind", kind_str(w.kind)),
        ("application", w.application.as_deref().unwrap_or("")),
        ("container", w.container.as_deref().unwrap_or("")),
        ("pod_uid", w.pod_uid.as_deref().unwrap_or("")),
        ("unit", w.unit.as_deref().unwrap_or("")),
    ])
}

fn other_labels() -> String {
    label_set(&[
        ("cgroup", OTHER),
        ("kind", ""),
        ("application", ""),
        ("container", ""),
        ("pod_uid", ""),
        ("unit", ""),
    ])
}

/// Everything /metrics shows, cumulative since `watch` started (gauges: the last interval).
#[derive(Debug)]
pub struct Metrics {
    max_cgroups: usize,
    filter: Option<Regex>,
    /// Cgroup naming lines by id.
    records: HashMap<u64, CgroupRecord>,
    /// Id -> series key (its path, fixed at its first callback).
    keys: HashMap<u64, String>,
    /// Cgroups with their own series, in the order they got them.
    slots: Vec<Series>,
    slot_of: HashMap<String, usize>,
    /// Seen this interval, not yet given a slot or folded.
    pending: HashMap<String, Series>,
    folded: HashSet<String>,
    other: Series,
    unthrottle_seen: bool,
    spans: BTreeMap<u32, Hist>,
    periods: u64,
    async_events: u64,
    irq_spans: u64,
    loss: LossRecord,
    thresh_s: Option<u64>,
    headroom_ns: Option<i64>,
    headroom_min_ns: Option<i64>,
    cpus_seen: BTreeSet<u32>,
    cpu_headroom_ns: BTreeMap<u32, i64>,
}

impl Metrics {
    /// `filter`: only cgroups whose path matches get their own series (`--cgroup`); the rest
    /// are summed into `other` like those beyond `max_cgroups`.
    pub fn new(max_cgroups: usize, filter: Option<Regex>) -> Self {
        Metrics {
            max_cgroups,
            filter,
            records: HashMap::new(),
            keys: HashMap::new(),
            slots: Vec::new(),
            slot_of: HashMap::new(),
            pending: HashMap::new(),
            folded: HashSet::new(),
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
                if c.path.is_some() || !self.records.contains_key(&c.id) {
                    self.records.insert(c.id, c.clone());
                }
            }
            CaptureLine::Period(p) => {
                self.periods += 1;
                self.unthrottle_seen |= p.counted_unthrottled().is_some();
                let key = self.key(p.cgroup_id);
                if self.folded.contains(&key) {
                    self.other.observe(p);
                } else if let Some(&i) = self.slot_of.get(&key) {
                    self.slots[i].observe(p);
                } else {
                    let labels = {
                        let w = self
                            .records
                            .get(&p.cgroup_id)
                            .map(|r| r.workload.clone())
                            .unwrap_or_else(|| classify(&key));
                        cgroup_labels(&key, &w)
                    };
                    self.pending
                        .entry(key)
                        .or_insert_with(|| Series::new(labels))
                        .observe(p);
                }
            }
            CaptureLine::IrqSpan(x) => {
                self.irq_spans += 1;
                self.spans
                    .entry(x.cpu)
                    .or_insert_with(Hist::time)
                    .observe(x.duration_ns);
            }
            CaptureLine::AsyncUnthrottle(_) => self.async_events += 1,
            CaptureLine::KmsgPeriodScaling(_)
            | CaptureLine::Loss(_)
            | CaptureLine::UnsentPeriods(_)
            | CaptureLine::CpuTotals(_)
            | CaptureLine::End(_) => {}
        }
    }

    /// Give the cgroups first seen this interval a series of their own (busiest first, while
    /// slots last and `--cgroup` matches) or fold them into `other` for good.
    pub fn settle(&mut self) {
        let mut pending: Vec<(String, Series)> = self.pending.drain().collect();
        pending.sort_by(|a, b| b.1.total_ns.cmp(&a.1.total_ns).then(a.0.cmp(&b.0)));
        for (key, series) in pending {
            let wanted = self.filter.as_ref().is_none_or(|re| re.is_match(&key));
            if wanted && self.slots.len() < self.max_cgroups {
                self.slot_of.insert(key, self.slots.len());
                self.slots.push(series);
            } else {
                self.other.merge(&series);
                self.folded.insert(key);
            }
        }
    }

    /// End of an interval: settle new cgroups, take the loss counters (cumulative, as the
    /// session reads them) and the interval's headroom gauges from its node-wide report.
    pub fn end_interval(&mut self, report: &Report, loss: LossRecord) {
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

    /// The exposition text.
    pub fn render(&self) -> String {
        let mut o = String::new();
        self.histograms(&mut o);
        self.gauges(&mut o);
        self.counters(&mut o);
        o
    }

    /// Callback time and unthrottled cfs_rqs by cgroup, interrupt spans by CPU.
    fn histograms(&self, o: &mut String) {
        let series: Vec<&Series> = self
            .slots
            .iter()
            .chain((!self.folded.is_empty()).then_some(&self.other))
            .collect();
        family(
            o,
            "cfstrace_callback_seconds",
            "histogram",
            "IRQs-off time of each CFS bandwidth period-timer callback (sched_cfs_period_timer), \
             by the cgroup whose timer it was.",
        );
        for s in &series {
            s.callback
                .write(o, "cfstrace_callback_seconds", &s.labels, 1e9);
        }
        if self.unthrottle_seen {
            family(
                o,
                "cfstrace_unthrottled_per_period",
                "histogram",
                "cfs_rqs one period-timer callback unthrottled, by cgroup.",
            );
            for s in &series {
                s.unthrottled
                    .write(o, "cfstrace_unthrottled_per_period", &s.labels, 1.0);
            }
        }
        if !self.spans.is_empty() {
            let name = "cfstrace_irq_span_seconds";
            let help = "IRQs-off time of each timer interrupt that ran period timers, by CPU.";
            by_cpu(o, [name, "histogram", help], &self.spans, |o, l, h| {
                h.write(o, name, l, 1e9);
            });
        }
    }

    /// The watchdog's threshold and the headroom left under it.
    fn gauges(&self, o: &mut String) {
        let gauges = [
            (
                "cfstrace_watchdog_thresh_seconds",
                "The hard-lockup watchdog's threshold (kernel.watchdog_thresh).",
                self.thresh_s.map(|t| t.to_string()),
            ),
            (
                "cfstrace_headroom_seconds",
                "watchdog_thresh minus the worst IRQs-off span of the node in the last interval.",
                self.headroom_ns.map(seconds),
            ),
            (
                "cfstrace_headroom_min_seconds",
                "The lowest node headroom of any interval since cfstrace started.",
                self.headroom_min_ns.map(seconds),
            ),
        ];
        for (name, help, value) in gauges {
            if let Some(v) = value {
                gauge(o, name, help, &v);
            }
        }
        if !self.cpu_headroom_ns.is_empty() {
            let name = "cfstrace_cpu_headroom_seconds";
            let help = "watchdog_thresh minus the CPU's worst IRQs-off span in the last interval.";
            by_cpu(
                o,
                [name, "gauge", help],
                &self.cpu_headroom_ns,
                |o, l, h| {
                    let _ = writeln!(o, "{name}{{{l}}} {}", seconds(*h));
                },
            );
        }
    }

    /// Events traced and lost since the start.
    fn counters(&self, o: &mut String) {
        family(
            o,
            "cfstrace_events_total",
            "counter",
            "Events traced since cfstrace started, by kind.",
        );
        for (kind, n) in [
            ("period_callback", self.periods),
            ("async_unthrottle", self.async_events),
            ("irq_span", self.irq_spans),
        ] {
            let _ = writeln!(o, "cfstrace_events_total{{kind=\"{kind}\"}} {n}");
        }
        family(
            o,
            "cfstrace_lost_events_total",
            "counter",
            "Events lost (ringbuf_full) or degraded (a start or an end missed, a cgroup read \
             failed) since cfstrace started, by reason.",
        );
        for (reason, n) in self.loss.counters() {
            let _ = writeln!(o, "cfstrace_lost_events_total{{reason=\"{reason}\"}} {n}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::records::{CgroupFacts, IrqSpanRecord};

    fn period(cg: u64, cpu: u32, dur: u64, unthrottled: u32) -> CaptureLine {
        CaptureLine::Period(PeriodRecord {
            ts_ns: 1,
            cpu,
            duration_ns: dur,
            cgroup_id: cg,
            quota_ns: u64::MAX,
            unthrottled,
            flags: tracer_ebpf::HOW_UNTHROTTLE,
            ..Default::default()
        })
    }

    fn named(id: u64, path: &str) -> CaptureLine {
        CaptureLine::Cgroup(CgroupRecord {
            facts: CgroupFacts {
                id,
                path: Some(path.to_string()),
                workload: classify(path),
                processes: Vec::new(),
                period_us: None,
                quota_us: None,
            },
            note: None,
            parents: None,
        })
    }

    fn empty_report() -> Report {
        let header = crate::model::records::test_header();
        crate::report::build_report(&header, &crate::analysis::Aggregator::new(), 0, vec![])
    }

    #[test]
    fn label_values_are_escaped_exactly() {
        assert_eq!(escape_label_value(r#"a"b\c"#), r#"a\"b\\c"#);
        assert_eq!(escape_label_value("x\ny"), "x\\ny");
        assert_eq!(escape_label_value("plain/ü {}"), "plain/ü {}");
        // A hostile path cannot close the label or start a new line.
        let l = label_set(&[("cgroup", "/a\"} 1\nevil_metric{x=\"")]);
        assert_eq!(l, r#"cgroup="/a\"} 1\nevil_metric{x=\"""#);
        assert!(!l.contains('\n'));
    }

    #[test]
    fn buckets_are_cumulative_and_end_in_inf() {
        let mut h = Hist::time();
        for v in [500, 1_000, 1_001, 3_000_000, 20_000_000_000] {
            h.observe(v);
        }
        let c = h.cumulative();
        assert_eq!(c.len(), TIME_BUCKETS.len() + 1);
        assert!(c.windows(2).all(|w| w[0].1 <= w[1].1), "{c:?}");
        assert_eq!(c[0], ("1e-06", 2), "le is inclusive");
        assert_eq!(c[1], ("2.5e-06", 3));
        assert_eq!(c.last().unwrap(), &("+Inf", 5));
        assert_eq!(c[c.len() - 2].1, 4, "20 s is above every bound");
        let mut o = String::new();
        h.write(&mut o, "x_seconds", "a=\"b\"", 1e9);
        assert!(
            o.contains("x_seconds_bucket{a=\"b\",le=\"+Inf\"} 5\n"),
            "{o}"
        );
        assert!(o.contains("x_seconds_count{a=\"b\"} 5\n"));
        assert!(o.contains("x_seconds_sum{a=\"b\"} 20.003002501\n"), "{o}");
        let mut u = Hist::counts();
        u.observe(0);
        u.observe(3);
        assert_eq!(&u.cumulative()[..3], &[("0", 1), ("1", 1), ("2", 1)]);
        assert_eq!(u.cumulative()[3], ("4", 2));
    }

    #[test]
    fn folding_keeps_series_stable_and_monotone() {
        let mut m = Metrics::new(1, None);
        m.feed(&named(10, "/busy"));
        m.feed(&named(11, "/quiet"));
        m.feed(&period(10, 0, 50_000, 2));
        m.feed(&period(11, 1, 1_000, 1));
        m.end_interval(&empty_report(), LossRecord::default());
        assert_eq!(m.cgroup_series(), 1);
        let text = m.render();
        assert!(text.contains("cgroup=\"/busy\""));
        assert!(!text.contains("cgroup=\"/quiet\""));
        assert!(text.contains(
            "cfstrace_callback_seconds_count{cgroup=\"other\",kind=\"\",application=\"\",container=\"\",pod_uid=\"\",unit=\"\"} 1"
        ));
        // /quiet gets busier than /busy later: still folded, `other` only grows.
        m.feed(&named(12, "/late"));
        for _ in 0..5 {
            m.feed(&period(11, 1, 9_000_000, 1));
            m.feed(&period(12, 2, 9_000_000, 1));
        }
        m.end_interval(&empty_report(), LossRecord::default());
        let text = m.render();
        assert!(!text.contains("/quiet") && !text.contains("/late"));
        assert!(text.contains("cgroup=\"other\""));
        assert!(text.contains("_count{cgroup=\"other\",kind=\"\",application=\"\",container=\"\",pod_uid=\"\",unit=\"\"} 11"), "{text}");
        assert!(text.contains("cfstrace_events_total{kind=\"period_callback\"} 12"));
        assert!(text.contains("cfstrace_unthrottled_per_period_bucket"));
    }

    #[test]
    fn filter_folds_non_matching_and_no_other_without_folding() {
        let mut m = Metrics::new(50, Some(Regex::new("kube").unwrap()));
        m.feed(&named(1, "/kubepods/pod1"));
        m.feed(&period(1, 0, 1_000, 0));
        m.end_interval(&empty_report(), LossRecord::default());
        assert!(!m.render().contains("\"other\""));
        m.feed(&named(2, "/system.slice/x.service"));
        m.feed(&period(2, 0, 1_000, 0));
        m.end_interval(&empty_report(), LossRecord::default());
        let t = m.render();
        assert!(t.contains("\"other\"") && !t.contains("x.service"), "{t}");
    }

    #[test]
    fn hostile_path_renders_one_series_per_line() {
        let mut m = Metrics::new(50, None);
        let evil = "/ev\"il\\na\nme} 1\n";
        m.feed(&named(7, evil));
        m.feed(&period(7, 0, 1_000, 0));
        m.feed(&CaptureLine::IrqSpan(IrqSpanRecord {
            cpu: 3,
            duration_ns: 2_000,
            ..Default::default()
        }));
        m.end_interval(&empty_report(), LossRecord::default());
        let t = m.render();
        for line in t.lines().filter(|l| !l.starts_with('#')) {
            // name{labels} value: the value is the last field and parses.
            let (_, v) = line.rsplit_once(' ').unwrap();
            assert!(v.parse::<f64>().is_ok() || v == "+Inf", "{line}");
        }
        assert!(t.contains(r#"cgroup="/ev\"il\\na\nme} 1\n""#), "{t}");
        assert!(t.contains("cfstrace_irq_span_seconds_count{cpu=\"3\"} 1"));
    }
}
