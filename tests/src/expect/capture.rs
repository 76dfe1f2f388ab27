//! A report against the capture it was built from: the capture reduced to a [`CaptureDigest`]
//! (here from the JSON Lines, in the VM guest by awk), then [`check_capture`].

use std::collections::{BTreeMap, BTreeSet};

use serde_json::Value;

use super::{Verdict, at, first_three, int, list, show};

/// One `irq_span` line of a capture.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SpanLine {
    pub cpu: u32,
    pub ts_ns: u64,
    pub duration_ns: u64,
    pub timers: u64,
    pub timers_ns: u64,
}

/// What a capture's event lines add up to, gathered apart from the report: the `irq_span`
/// lines as they are, and the `period` lines per timer-interrupt span (the VM guest reduces
/// its capture to this with awk, [`CaptureDigest::from_capture`] does the same here).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CaptureDigest {
    pub spans: Vec<SpanLine>,
    /// (cpu, span_ts_ns) -> (callbacks, their summed duration_ns, distinct cgroups);
    /// span_ts_ns 0 holds the callbacks outside any traced span.
    pub by_span: BTreeMap<(u32, u64), (u64, u64, u64)>,
    /// cgroup id -> callbacks.
    pub per_cgroup: BTreeMap<u64, u64>,
    /// Lines that were neither (console noise).
    pub garbled: Vec<String>,
}

fn span_line(v: &Value) -> Option<SpanLine> {
    let u = |k: &str| v.get(k).and_then(Value::as_u64);
    Some(SpanLine {
        cpu: u32::try_from(u("cpu")?).ok()?,
        ts_ns: u("ts_ns")?,
        duration_ns: u("duration_ns")?,
        timers: u("timers")?,
        timers_ns: u("timers_ns")?,
    })
}

impl CaptureDigest {
    /// The guest's digest: `{"kind":"irq_span",...}` lines, `P <cpu> <span_ts_ns> <callbacks>
    /// <sum of duration_ns> <distinct cgroups>` and `G <cgroup id> <callbacks>` lines.
    pub fn parse<S: AsRef<str>>(lines: &[S]) -> CaptureDigest {
        let mut d = CaptureDigest::default();
        for l in lines {
            let l = l.as_ref().trim();
            if !l.is_empty() && !d.take_line(l) {
                d.garbled.push(l.to_string());
            }
        }
        d
    }

    /// One line of the guest's digest; false when it is none of its kinds.
    fn take_line(&mut self, l: &str) -> bool {
        if l.starts_with('{') {
            let span = serde_json::from_str::<Value>(l)
                .ok()
                .filter(|v| v.get("kind").and_then(Value::as_str) == Some("irq_span"))
                .and_then(|v| span_line(&v));
            return span.map(|s| self.spans.push(s)).is_some();
        }
        let n: Option<Vec<u64>> = l
            .split_whitespace()
            .skip(1)
            .map(|x| x.parse().ok())
            .collect();
        match (l.split_whitespace().next(), n.as_deref()) {
            (Some("P"), Some(&[cpu, ts, callbacks, sum, cgroups])) => {
                let Ok(cpu) = u32::try_from(cpu) else {
                    return false;
                };
                self.by_span.insert((cpu, ts), (callbacks, sum, cgroups));
                true
            }
            (Some("G"), Some(&[id, callbacks])) => {
                self.per_cgroup.insert(id, callbacks);
                true
            }
            _ => false,
        }
    }

    /// The same digest from a capture (JSON Lines) read here.
    pub fn from_capture(text: &str) -> CaptureDigest {
        let mut d = CaptureDigest::default();
        let mut seen: BTreeSet<(u32, u64, u64)> = BTreeSet::new();
        for l in text.lines() {
            let Ok(v) = serde_json::from_str::<Value>(l) else {
                continue;
            };
            match v.get("kind").and_then(Value::as_str) {
                Some("irq_span") => match span_line(&v) {
                    Some(s) => d.spans.push(s),
                    None => d.garbled.push(l.to_string()),
                },
                Some("period") => {
                    let u = |k: &str| v.get(k).and_then(Value::as_u64).unwrap_or(0);
                    let (cpu, ts, id) = (u("cpu") as u32, u("span_ts_ns"), u("cgroup_id"));
                    let e = d.by_span.entry((cpu, ts)).or_default();
                    e.0 += 1;
                    e.1 += u("duration_ns");
                    if seen.insert((cpu, ts, id)) {
                        e.2 += 1;
                    }
                    *d.per_cgroup.entry(id).or_default() += 1;
                }
                _ => {}
            }
        }
        d
    }

    /// Callbacks in the capture.
    pub fn periods(&self) -> u64 {
        self.by_span.values().map(|e| e.0).sum()
    }

    /// Callbacks inside a traced span.
    pub fn periods_in_span(&self) -> u64 {
        self.by_span
            .iter()
            .filter(|(k, _)| k.1 != 0)
            .map(|(_, e)| e.0)
            .sum()
    }
}

/// A report against the capture it was built from: callbacks in all and per cgroup, spans per
/// CPU, the longest span and its timers, and (when the kernel side lost nothing) each span's
/// `timers` / `timers_ns` against the callback lines that name it. The report and the capture
/// hold the same events, so timing cannot part them: the longest span is compared with the
/// capture's longest (any of equal length), never with a threshold.
pub fn check_capture(r: &Value, d: &CaptureDigest) -> Verdict {
    let mut v = Verdict::default();
    if let Some(first) = d.garbled.first() {
        v.failures.push(format!(
            "{} capture digest line(s) unreadable, e.g. {first:?}",
            d.garbled.len()
        ));
    }
    check_callbacks(r, d, &mut v);
    check_spans_per_cpu(r, d, &mut v);
    check_span_timers(r, d, &mut v);
    v
}

/// Callbacks in all, inside spans, and per cgroup.
fn check_callbacks(r: &Value, d: &CaptureDigest, v: &mut Verdict) {
    let periods = int(r, "/events/periods").unwrap_or(-1);
    v.need(periods == d.periods() as i64, || {
        format!(
            "events.periods is {periods}, the capture has {} callbacks",
            d.periods()
        )
    });
    let in_span = int(r, "/events/periods_in_span").unwrap_or(-1);
    v.need(in_span == d.periods_in_span() as i64, || {
        format!(
            "events.periods_in_span is {in_span}, the capture has {} callbacks inside spans",
            d.periods_in_span()
        )
    });
    let cgroups = list(r, "/cgroups");
    let mut wrong = Vec::new();
    for (&id, &n) in &d.per_cgroup {
        let got = cgroups
            .iter()
            .find(|g| g.get("id").and_then(Value::as_u64) == Some(id))
            .and_then(|g| int(g, "/periods"));
        if got != Some(n as i64) {
            wrong.push(format!("cgroup {id}: report {got:?}, capture {n}"));
        }
    }
    v.need(wrong.is_empty(), || {
        format!(
            "callbacks per cgroup differ from the capture for {} cgroup(s): {}",
            wrong.len(),
            first_three(&wrong)
        )
    });
}

/// Spans per CPU: their count, the longest and the most timers in one.
fn check_spans_per_cpu(r: &Value, d: &CaptureDigest, v: &mut Verdict) {
    v.need(
        int(r, "/events/irq_spans") == Some(d.spans.len() as i64),
        || {
            format!(
                "events.irq_spans is {}, the capture has {} irq_span lines",
                show(at(r, "/events/irq_spans")),
                d.spans.len()
            )
        },
    );
    let mut by_cpu: BTreeMap<u32, Vec<&SpanLine>> = BTreeMap::new();
    for s in &d.spans {
        by_cpu.entry(s.cpu).or_default().push(s);
        v.need(s.timers >= 1 && s.timers_ns <= s.duration_ns, || {
            format!("capture span {s:?}: want timers >= 1 and timers_ns <= duration_ns")
        });
    }
    let cpus = list(r, "/cpus");
    for c in cpus {
        let cpu = int(c, "/cpu").unwrap_or(-1);
        let lines = u32::try_from(cpu)
            .ok()
            .and_then(|k| by_cpu.get(&k))
            .map_or(&[][..], Vec::as_slice);
        check_cpu_spans(c, cpu, lines, v);
    }
    for cpu in by_cpu.keys() {
        v.need(
            cpus.iter().any(|c| int(c, "/cpu") == Some(i64::from(*cpu))),
            || format!("the capture has spans on cpu {cpu}, the report no such CPU"),
        );
    }
}

/// One CPU of the report against the capture's spans on it.
fn check_cpu_spans(c: &Value, cpu: i64, lines: &[&SpanLine], v: &mut Verdict) {
    let spans = int(c, "/irq_spans").unwrap_or(0);
    v.need(spans == lines.len() as i64, || {
        format!(
            "cpus[{cpu}].irq_spans is {spans}, the capture has {} irq_span lines on it",
            lines.len()
        )
    });
    let Some(longest) = lines.iter().map(|s| s.duration_ns).max() else {
        return;
    };
    v.need(int(c, "/max_irq_span_ns") == Some(longest as i64), || {
        format!(
            "cpus[{cpu}].max_irq_span_ns is {}, the capture's longest span there is {longest}",
            show(at(c, "/max_irq_span_ns"))
        )
    });
    let w = at(c, "/worst_irq_span");
    let same = |w: &Value, s: &SpanLine| {
        [
            ("/ts_ns", s.ts_ns),
            ("/duration_ns", s.duration_ns),
            ("/timers", s.timers),
            ("/timers_ns", s.timers_ns),
        ]
        .iter()
        .all(|&(k, x)| int(w, k) == Some(x as i64))
    };
    let matches = w.is_some_and(|w| lines.iter().any(|s| s.duration_ns == longest && same(w, s)));
    v.need(matches, || {
        format!(
            "cpus[{cpu}].worst_irq_span {} is not the capture's longest span there ({:?})",
            show(w),
            lines.iter().find(|s| s.duration_ns == longest)
        )
    });
    let most = lines.iter().map(|s| s.timers).max().unwrap_or(0);
    v.need(
        int(c, "/period_timers_per_span/max") == Some(most as i64),
        || {
            format!(
                "cpus[{cpu}].period_timers_per_span.max is {}, the capture's spans there hold up to {most}",
                show(at(c, "/period_timers_per_span/max"))
            )
        },
    );
}

/// Each span against the callbacks that name it: exact unless the kernel side lost events.
fn check_span_timers(r: &Value, d: &CaptureDigest, v: &mut Verdict) {
    let lost: i64 = ["lost", "ringbuf_full", "missed_exit", "span_missed_exit"]
        .iter()
        .filter_map(|k| int(r, &format!("/events/{k}")))
        .sum();
    if lost > 0 {
        v.notes.push(format!(
            "{lost} event(s) lost or frames missed: spans not matched to their callbacks"
        ));
        return;
    }
    let mut off = Vec::new();
    for s in &d.spans {
        let got = d
            .by_span
            .get(&(s.cpu, s.ts_ns))
            .copied()
            .unwrap_or_default();
        if (got.0, got.1) != (s.timers, s.timers_ns) {
            off.push(format!(
                "cpu {} span at {}: {} timers / {} ns, its callback lines {} / {} ns",
                s.cpu, s.ts_ns, s.timers, s.timers_ns, got.0, got.1
            ));
        }
    }
    v.need(off.is_empty(), || {
        format!(
            "{} of {} spans disagree with the callbacks that ran in them: {}",
            off.len(),
            d.spans.len(),
            first_three(&off)
        )
    });
}
