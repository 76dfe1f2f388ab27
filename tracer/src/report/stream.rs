//! The `cfstrace.watch/1` stream: what `watch --json` prints, one JSON object a line, each
//! with a `kind`. The run's static facts (host, probes, backend, the watch's own settings) come
//! once in the `start` line; then one `interval` line per interval, with its wall-clock bounds
//! and the interval's own figures, taken from that interval's [`Report`] (its sub-structs, not
//! copies); a `figures` line before the first interval and whenever what the kernel gave changes;
//! and an `end` line when the run ends by itself or on a stop signal, with the run's totals.
//!
//! The last interval of a run that ends inside it (Ctrl-C, SIGTERM, `--duration` not a
//! multiple of `--interval`) is printed with `"partial": true` and its real bounds: its events
//! and losses happened, so they are reported, never dropped.
use std::collections::BTreeMap;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use super::model::{
    Busiest, CgroupReport, CpuReport, Culprit, Events, Figures, HeadroomAlert, HeadroomBasis,
    NodePrecursors, Report, WorstIrqsOff,
};
use crate::capture::{CaptureHeader, ProbeStatus};
use crate::model::host::HostFacts;
use crate::model::probe::{Backend, Probe, Style};
use crate::model::workload::Workload;

pub const WATCH_SCHEMA: &str = "cfstrace.watch/1";

/// A wall-clock instant (CLOCK_REALTIME), kept as nanoseconds since the Unix epoch.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct WallClock {
    pub unix_ns: u64,
}

impl WallClock {
    pub fn now() -> Self {
        Self::from(SystemTime::now())
    }

    /// RFC 3339 in UTC, to the millisecond (`2026-12-02T06:30:01.000Z`): what a TSDB or
    /// `jq`'s `fromdateiso8601` (after cutting the fraction) reads.
    pub fn rfc3339(self) -> String {
        humantime::format_rfc3339_millis(UNIX_EPOCH + Duration::from_nanos(self.unix_ns))
            .to_string()
    }
}

impl From<SystemTime> for WallClock {
    /// A clock set before 1970 reads as the epoch.
    fn from(t: SystemTime) -> Self {
        let since = t.duration_since(UNIX_EPOCH).unwrap_or_default();
        WallClock {
            unix_ns: u64::try_from(since.as_nanos()).unwrap_or(u64::MAX),
        }
    }
}

/// One line of the stream.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(tag = "kind", rename_all = "snake_case")]
// A few lines an interval, each built and written once: their sizes do not matter.
#[allow(clippy::large_enum_variant)]
pub enum WatchLine {
    Start(StartLine),
    Figures(FiguresLine),
    Interval(IntervalLine),
    End(EndLine),
}

/// The run's static facts, once, first.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct StartLine {
    /// `cfstrace.watch/1`.
    pub schema: String,
    pub tool_version: String,
    /// Hostname, kernel, CPUs, watchdog.
    pub host: HostFacts,
    /// What the period-timer frame used.
    pub backend: Style,
    pub backend_requested: Backend,
    /// Probe name -> how it was attached, or why not.
    pub probes: BTreeMap<Probe, ProbeStatus>,
    /// When the probes were armed: the first interval starts here.
    pub started_unix_ns: u64,
    pub started: String,
    /// `--interval`, `--duration` (null: until stopped), `--cgroup`, `--top`,
    /// `--highlight-under`: what every interval line is cut and judged by.
    pub interval_s: f64,
    pub duration_s: Option<f64>,
    pub cgroup_filter: Option<String>,
    pub top: usize,
    pub highlight_under_pct: f64,
}

/// Which figures the kernel gave, and why not: before the first interval, then again only
/// before an interval where that changed (it follows the events seen, not just the probes).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct FiguresLine {
    /// The first interval it applies to.
    pub seq: u64,
    pub figures: Figures,
}

/// One interval's figures. Node-wide figures (headroom, events, losses, CPUs, culprit) cover
/// every cgroup; `cgroups` is cut by `--cgroup` and `--top`.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct IntervalLine {
    /// 0, 1, 2, ... in order.
    pub seq: u64,
    /// Wall-clock bounds (CLOCK_REALTIME): an interval starts where the previous one ended.
    pub start_unix_ns: u64,
    pub end_unix_ns: u64,
    /// The same bounds in RFC 3339 (UTC, milliseconds); `end` is the time to plot it at.
    pub start: String,
    pub end: String,
    /// Its length, measured on the monotonic clock.
    pub duration_s: f64,
    /// The run ended inside it (stop signal, or `--duration` reached): shorter than
    /// `interval_s`, its figures cover only `start`..`end`.
    pub partial: bool,
    /// watchdog_thresh - the worst IRQs-off span of the interval (`headroom_basis`).
    pub headroom_ns: Option<i64>,
    pub headroom_basis: Option<HeadroomBasis>,
    pub worst_irqs_off: Option<WorstIrqsOff>,
    pub headroom_alert: Option<HeadroomAlert>,
    /// The interval's events and losses (not cumulative).
    pub events: Events,
    pub culprit: Option<CulpritRef>,
    /// Cgroups seen in the interval before `--cgroup` and `--top`.
    pub cgroups_total: usize,
    /// Worst first.
    pub cgroups: Vec<CgroupReport>,
    /// CPUs that ran a period timer in the interval.
    pub cpus: Vec<CpuReport>,
    pub precursors: Option<NodePrecursors>,
    /// The lockup forecast, fitted over the whole run so far (not only this interval).
    #[serde(default)]
    pub forecast: Option<super::forecast::Forecast>,
    pub warnings: Vec<String>,
}

/// The interval's culprit, named; its processes and figures are its entry in `cgroups` (there
/// unless `--cgroup` or `--top` cut it), not repeated here.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct CulpritRef {
    pub id: u64,
    pub path: Option<String>,
    pub workload: Workload,
    /// The report's culprit `headline` and `reason`.
    pub headline: String,
    pub reason: String,
    /// The busiest cgroup by total IRQs-off time in the interval, when not the culprit.
    pub busiest_by_total: Option<Busiest>,
}

impl From<Culprit> for CulpritRef {
    fn from(c: Culprit) -> Self {
        let facts = c.cgroup.facts;
        CulpritRef {
            id: facts.id,
            path: facts.path,
            workload: facts.workload,
            headline: c.headline,
            reason: c.reason,
            busiest_by_total: c.busiest_by_total,
        }
    }
}

/// Why the run ended.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum EndReason {
    /// `--duration` reached.
    Duration,
    /// SIGINT (Ctrl-C) or SIGTERM.
    Interrupted,
}

/// The last line: why and when the run ended, and its totals over every interval (the partial
/// one included), so a reader that lost lines still sees what was lost.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct EndLine {
    pub reason: EndReason,
    pub ended_unix_ns: u64,
    pub ended: String,
    /// Interval lines printed.
    pub intervals: u64,
    /// Period-timer callbacks and events lost over the run (the sums of the intervals').
    pub periods: u64,
    pub lost: u64,
}

/// The watch's settings the start line repeats.
#[derive(Clone, Debug, PartialEq)]
pub struct WatchSettings {
    pub interval: Duration,
    pub duration: Option<Duration>,
    pub cgroup_filter: Option<String>,
    pub top: usize,
    pub highlight_under_pct: f64,
}

/// An interval's wall-clock bounds and monotonic length.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Bounds {
    pub start: WallClock,
    pub end: WallClock,
    pub length: Duration,
}

/// Turns each interval's report into lines, numbering the intervals and keeping the run's
/// totals and the figures last printed.
#[derive(Debug, Default)]
pub struct WatchStream {
    next_seq: u64,
    figures_shown: Option<Figures>,
    periods: u64,
    lost: u64,
}

impl WatchStream {
    pub fn new() -> Self {
        Self::default()
    }

    /// The start line, from the session's header.
    pub fn start(header: &CaptureHeader, settings: &WatchSettings) -> WatchLine {
        let started = WallClock {
            unix_ns: header.started_unix_ns,
        };
        WatchLine::Start(StartLine {
            schema: WATCH_SCHEMA.to_string(),
            tool_version: env!("CARGO_PKG_VERSION").to_string(),
            host: header.host.clone(),
            backend: header.backend,
            backend_requested: header.backend_requested,
            probes: header.probes.clone(),
            started_unix_ns: started.unix_ns,
            started: started.rfc3339(),
            interval_s: settings.interval.as_secs_f64(),
            duration_s: settings.duration.map(|d| d.as_secs_f64()),
            cgroup_filter: settings.cgroup_filter.clone(),
            top: settings.top,
            highlight_under_pct: settings.highlight_under_pct,
        })
    }

    /// An interval's lines: its figures when they differ from the last shown, then the
    /// interval. `report` is already cut (`--cgroup`, `--top`); `cgroups_total` is before.
    pub fn interval(
        &mut self,
        report: Report,
        bounds: Bounds,
        partial: bool,
        cgroups_total: usize,
    ) -> Vec<WatchLine> {
        let seq = self.next_seq;
        self.next_seq += 1;
        self.periods += report.events.periods;
        self.lost += report.events.lost;
        let mut lines = Vec::with_capacity(2);
        if self.figures_shown.as_ref() != Some(&report.figures) {
            self.figures_shown = Some(report.figures.clone());
            lines.push(WatchLine::Figures(FiguresLine {
                seq,
                figures: report.figures,
            }));
        }
        lines.push(WatchLine::Interval(IntervalLine {
            seq,
            start_unix_ns: bounds.start.unix_ns,
            end_unix_ns: bounds.end.unix_ns,
            start: bounds.start.rfc3339(),
            end: bounds.end.rfc3339(),
            duration_s: bounds.length.as_secs_f64(),
            partial,
            headroom_ns: report.headroom_ns,
            headroom_basis: report.headroom_basis,
            worst_irqs_off: report.worst_irqs_off,
            headroom_alert: report.headroom_alert,
            events: report.events,
            culprit: report.culprit.map(CulpritRef::from),
            cgroups_total,
            cgroups: report.cgroups,
            cpus: report.cpus,
            precursors: report.precursors,
            forecast: report.forecast,
            warnings: report.warnings,
        }));
        lines
    }

    /// The end line.
    pub fn end(&self, reason: EndReason, at: WallClock) -> WatchLine {
        WatchLine::End(EndLine {
            reason,
            ended_unix_ns: at.unix_ns,
            ended: at.rfc3339(),
            intervals: self.next_seq,
            periods: self.periods,
            lost: self.lost,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::analysis::Aggregator;
    use crate::model::records::LossRecord;
    use crate::report::build_report;
    use crate::report::fixtures::{agg, header};

    fn settings() -> WatchSettings {
        WatchSettings {
            interval: Duration::from_secs(1),
            duration: None,
            cgroup_filter: Some("kubepods".into()),
            top: 10,
            highlight_under_pct: 10.0,
        }
    }

    fn bounds(start_s: u64, length_ms: u64) -> Bounds {
        let start = WallClock {
            unix_ns: start_s * 1_000_000_000,
        };
        Bounds {
            start,
            end: WallClock {
                unix_ns: start.unix_ns + length_ms * 1_000_000,
            },
            length: Duration::from_millis(length_ms),
        }
    }

    #[test]
    fn wall_clock_in_rfc3339() {
        let t = WallClock {
            unix_ns: 1_796_193_001_000_000_000 + 250_999_999,
        };
        assert_eq!(t.rfc3339(), "2026-12-02T06:30:01.250Z");
        assert_eq!(
            WallClock::from(UNIX_EPOCH).rfc3339(),
            "1970-01-01T00:00:00.000Z"
        );
        let before = UNIX_EPOCH - Duration::from_secs(5);
        assert_eq!(WallClock::from(before).unix_ns, 0);
    }

    #[test]
    fn start_line_holds_the_static_facts() {
        let h = header();
        let line = serde_json::to_value(WatchStream::start(&h, &settings())).unwrap();
        assert_eq!(line["kind"], "start");
        assert_eq!(line["schema"], WATCH_SCHEMA);
        assert_eq!(line["host"]["hostname"], h.host.hostname.as_str());
        assert_eq!(line["host"]["watchdog"]["thresh_s"], 10);
        assert!(line["probes"].as_object().is_some_and(|p| !p.is_empty()));
        assert_eq!(line["started_unix_ns"], h.started_unix_ns);
        assert_eq!(line["interval_s"], 1.0);
        assert_eq!(line["duration_s"], serde_json::Value::Null);
        assert_eq!(line["cgroup_filter"], "kubepods");
    }

    #[test]
    fn interval_lines_number_themselves_and_keep_no_static_facts() {
        let h = header();
        let mut s = WatchStream::new();
        let rep = build_report(&h, &agg(), 1_000_000_000, vec![]);
        let first = s.interval(rep.clone(), bounds(100, 1000), false, 3);
        assert_eq!(first.len(), 2, "the figures come before the first interval");
        assert!(
            matches!(&first[0], WatchLine::Figures(f) if f.seq == 0 && f.figures == rep.figures)
        );
        let second = s.interval(rep.clone(), bounds(101, 400), true, 3);
        assert_eq!(second.len(), 1, "unchanged figures are not repeated");
        let WatchLine::Interval(i) = &second[0] else {
            panic!("{second:?}")
        };
        assert_eq!(i.seq, 1);
        assert!(i.partial);
        assert_eq!(i.start_unix_ns, 101_000_000_000);
        assert_eq!(i.end_unix_ns, 101_400_000_000);
        assert_eq!(i.duration_s, 0.4);
        assert_eq!(i.cgroups_total, 3);
        assert_eq!(i.headroom_ns, rep.headroom_ns);
        let culprit = rep.culprit.as_ref().unwrap();
        let named = i.culprit.as_ref().unwrap();
        assert_eq!(named.id, culprit.cgroup.id);
        assert_eq!(named.path, culprit.cgroup.path);
        assert_eq!(named.reason, culprit.reason);
        let v = serde_json::to_value(&second[0]).unwrap();
        assert_eq!(v["kind"], "interval");
        for static_fact in ["probes", "host", "hostname", "kernel", "figures", "schema"] {
            assert!(v.get(static_fact).is_none(), "{static_fact} in {v}");
        }
        assert_eq!(v["start"], "1970-01-01T00:01:41.000Z");
        assert_eq!(v["end"], "1970-01-01T00:01:41.400Z");
        // The culprit names itself without its figures (those are in `cgroups`).
        assert!(v["culprit"]["path"].is_string() && v["culprit"]["reason"].is_string());
        for figure in ["callback_ns", "processes", "periods"] {
            assert!(v["culprit"].get(figure).is_none(), "{}", v["culprit"]);
        }
        // And every line reads back.
        let back: WatchLine = serde_json::from_value(v).unwrap();
        assert_eq!(back, second[0]);
    }

    #[test]
    fn figures_line_again_when_they_change() {
        let h = header();
        let mut s = WatchStream::new();
        let busy = build_report(&h, &agg(), 1, vec![]);
        let idle = build_report(&h, &Aggregator::new(), 1, vec![]);
        assert_ne!(
            busy.figures, idle.figures,
            "the fixture's figures follow its events"
        );
        let kinds = |lines: Vec<WatchLine>| -> Vec<&'static str> {
            lines
                .iter()
                .map(|l| match l {
                    WatchLine::Figures(_) => "figures",
                    WatchLine::Interval(_) => "interval",
                    _ => "other",
                })
                .collect()
        };
        let b = bounds(1, 1000);
        assert_eq!(
            kinds(s.interval(busy.clone(), b, false, 1)),
            ["figures", "interval"]
        );
        assert_eq!(kinds(s.interval(busy.clone(), b, false, 1)), ["interval"]);
        assert_eq!(
            kinds(s.interval(idle, b, false, 0)),
            ["figures", "interval"]
        );
        assert_eq!(
            kinds(s.interval(busy, b, false, 1)),
            ["figures", "interval"]
        );
    }

    #[test]
    fn end_line_sums_the_intervals_losses() {
        let h = header();
        let mut s = WatchStream::new();
        let mut a = agg();
        a.set_loss(LossRecord {
            ringbuf_full: 7,
            ..Default::default()
        });
        let rep = build_report(&h, &a, 1, vec![]);
        assert_eq!(rep.events.lost, 7);
        s.interval(rep.clone(), bounds(1, 1000), false, 1);
        s.interval(rep.clone(), bounds(2, 300), true, 1);
        let end = serde_json::to_value(s.end(
            EndReason::Interrupted,
            WallClock {
                unix_ns: 2_300_000_000,
            },
        ))
        .unwrap();
        assert_eq!(end["kind"], "end");
        assert_eq!(end["reason"], "interrupted");
        assert_eq!(end["intervals"], 2);
        assert_eq!(end["lost"], 14);
        assert_eq!(end["periods"], 2 * rep.events.periods);
        assert_eq!(end["ended"], "1970-01-01T00:00:02.300Z");
    }
}
