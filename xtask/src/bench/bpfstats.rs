//! `kernel.bpf_stats_enabled` figures per program: `bpftool prog show --json` samples, their
//! deltas, and which attach point each program sits on (cfstrace's by program name, the
//! peer's from `bpftool perf show` / `bpftool link show`). Pure: the host and the guests hand
//! in bpftool's JSON.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use anyhow::{Context, Result};
use serde_json::Value;

/// One program in one sample.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Prog {
    pub id: u64,
    pub name: String,
    /// bpftool's `type`: tracepoint, raw_tracepoint, tracing, kprobe, ...
    pub kind: String,
    pub run_cnt: u64,
    pub run_time_ns: u64,
}

/// A `bpftool prog show --json` sample, by program id.
pub type Sample = BTreeMap<u64, Prog>;

pub fn parse_progs(json: &str) -> Result<Sample> {
    let v: Value = serde_json::from_str(json.trim()).context("bpftool prog show: not JSON")?;
    let arr = v.as_array().context("bpftool prog show: not a list")?;
    Ok(arr
        .iter()
        .filter_map(|p| {
            let id = p.get("id")?.as_u64()?;
            Some((
                id,
                Prog {
                    id,
                    name: p.get("name")?.as_str()?.to_string(),
                    kind: p.get("type")?.as_str()?.to_string(),
                    run_cnt: p.get("run_cnt").and_then(Value::as_u64).unwrap_or(0),
                    run_time_ns: p.get("run_time_ns").and_then(Value::as_u64).unwrap_or(0),
                },
            ))
        })
        .collect())
}

/// Programs of `later` not in `earlier`: what one tool loaded between two samples.
pub fn new_ids(earlier: &Sample, later: &Sample) -> BTreeSet<u64> {
    later
        .keys()
        .filter(|id| !earlier.contains_key(id))
        .copied()
        .collect()
}

/// Hits and run time of one program between two samples.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Delta {
    pub hits: u64,
    pub run_ns: u64,
}

impl Delta {
    pub fn ns_per_hit(self) -> f64 {
        self.run_ns as f64 / self.hits as f64
    }
}

pub fn delta(a: &Sample, b: &Sample, id: u64) -> Option<Delta> {
    let (x, y) = (a.get(&id)?, b.get(&id)?);
    Some(Delta {
        hits: y.run_cnt.saturating_sub(x.run_cnt),
        run_ns: y.run_time_ns.saturating_sub(x.run_time_ns),
    })
}

/// How a program is dispatched, which decides its per-hit dispatch cost outside run_time_ns.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Style {
    /// Any tracepoint: raw_tp, tp_btf, or bpftrace's perf-event tracepoint.
    Tracepoint,
    Kprobe,
    Kretprobe,
    Fentry,
    Fexit,
}

impl Style {
    pub fn name(self) -> &'static str {
        match self {
            Style::Tracepoint => "tracepoint",
            Style::Kprobe => "kprobe",
            Style::Kretprobe => "kretprobe",
            Style::Fentry => "fentry",
            Style::Fexit => "fexit",
        }
    }
}

/// An attach point: a tracepoint or a kernel function, and the style.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Attach {
    pub style: Style,
    pub target: String,
}

impl fmt::Display for Attach {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}", self.style.name(), self.target)
    }
}

/// The functions both tools probe (the peer's kfunc programs are named after them, cut to
/// 15 characters).
pub const FUNCTIONS: &[&str] = &[
    "sched_cfs_period_timer",
    "distribute_cfs_runtime",
    "unthrottle_cfs_rq",
    "enqueue_entity",
    "__cfsb_csd_unthrottle",
    "hrtimer_interrupt",
];

/// Where a cfstrace program (tracer-ebpf/src/main.rs) sits, by its name.
pub fn cfstrace_attach(name: &str) -> Option<Attach> {
    use Style::*;
    let (style, target) = match name {
        "hrtimer_expire_entry" | "hrtimer_expire_entry_btf" => (Tracepoint, name_of(name)),
        "hrtimer_expire_exit"
        | "local_timer_entry"
        | "local_timer_exit"
        | "csd_function_entry"
        | "csd_function_exit" => (Tracepoint, name),
        "nr_running" => (Tracepoint, "sched_update_nr_running_tp"),
        "period_timer_kprobe" => (Kprobe, "sched_cfs_period_timer"),
        "period_timer_kretprobe" => (Kretprobe, "sched_cfs_period_timer"),
        "period_timer_fentry" => (Fentry, "sched_cfs_period_timer"),
        "period_timer_fexit" => (Fexit, "sched_cfs_period_timer"),
        "csd_unthrottle_kprobe" => (Kprobe, "__cfsb_csd_unthrottle"),
        "csd_unthrottle_kretprobe" => (Kretprobe, "__cfsb_csd_unthrottle"),
        "csd_unthrottle_fentry" => (Fentry, "__cfsb_csd_unthrottle"),
        "csd_unthrottle_fexit" => (Fexit, "__cfsb_csd_unthrottle"),
        "irq_span_kprobe" => (Kprobe, "hrtimer_interrupt"),
        "irq_span_kretprobe" => (Kretprobe, "hrtimer_interrupt"),
        "distribute_kprobe" => (Kprobe, "distribute_cfs_runtime"),
        "distribute_fentry" => (Fentry, "distribute_cfs_runtime"),
        "unthrottle_kprobe" => (Kprobe, "unthrottle_cfs_rq"),
        "unthrottle_fentry" => (Fentry, "unthrottle_cfs_rq"),
        "enqueue_kprobe" => (Kprobe, "enqueue_entity"),
        "enqueue_fentry" => (Fentry, "enqueue_entity"),
        _ => return None,
    };
    Some(Attach {
        style,
        target: target.to_string(),
    })
}

fn name_of(prog: &str) -> &str {
    prog.trim_end_matches("_btf")
}

/// A program's attachment as `bpftool perf show` and `bpftool link show` describe it.
#[derive(Debug, Clone, Default)]
pub struct Attachments {
    /// prog id -> attach point (perf-event attachments: tracepoints, kprobes, kretprobes).
    perf: BTreeMap<u64, Attach>,
    /// prog id -> fentry or fexit (tracing links; the function comes from the prog's name).
    tracing: BTreeMap<u64, Style>,
}

impl Attachments {
    /// From `bpftool perf show --json` and `bpftool link show --json` (either may be empty).
    pub fn parse(perf_json: &str, link_json: &str) -> Attachments {
        let mut a = Attachments::default();
        let list = |s: &str| -> Vec<Value> {
            serde_json::from_str::<Value>(s.trim())
                .ok()
                .and_then(|v| v.as_array().cloned())
                .unwrap_or_default()
        };
        for p in list(perf_json) {
            let Some(id) = p.get("prog_id").and_then(Value::as_u64) else {
                continue;
            };
            let s = |k: &str| p.get(k).and_then(Value::as_str).map(str::to_string);
            let attach = match s("fd_type").as_deref() {
                Some("tracepoint") | Some("raw_tracepoint") => s("tracepoint").map(|t| Attach {
                    style: Style::Tracepoint,
                    target: t,
                }),
                Some("kprobe") => s("func").map(|t| Attach {
                    style: Style::Kprobe,
                    target: t,
                }),
                Some("kretprobe") => s("func").map(|t| Attach {
                    style: Style::Kretprobe,
                    target: t,
                }),
                _ => None,
            };
            if let Some(at) = attach {
                a.perf.insert(id, at);
            }
        }
        for l in list(link_json) {
            let Some(id) = l.get("prog_id").and_then(Value::as_u64) else {
                continue;
            };
            match l.get("attach_type").and_then(Value::as_str) {
                Some("trace_fentry") => a.tracing.insert(id, Style::Fentry),
                Some("trace_fexit") => a.tracing.insert(id, Style::Fexit),
                _ => None,
            };
        }
        a
    }

    /// Where a peer (bpftrace) program sits: its perf attachment, or its tracing link's style
    /// and the probed function its (cut) name starts.
    pub fn peer_attach(&self, prog: &Prog) -> Option<Attach> {
        if let Some(a) = self.perf.get(&prog.id) {
            return Some(a.clone());
        }
        let style = *self.tracing.get(&prog.id)?;
        let name = prog
            .name
            .trim_start_matches("kretfunc_")
            .trim_start_matches("kfunc_")
            .trim_start_matches("vmlinux_");
        let target = FUNCTIONS
            .iter()
            .find(|f| !name.is_empty() && (f.starts_with(name) || name.starts_with(**f)))?;
        Some(Attach {
            style,
            target: target.to_string(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const PROGS: &str = r#"[{"id":493,"type":"tracepoint","name":"hrtimer_expire_","run_time_ns":2000,"run_cnt":10},
        {"id":504,"type":"tracing","name":"hrtimer_expire_entry_btf","run_time_ns":700,"run_cnt":10,"btf_id":166},
        {"id":600,"type":"tracing","name":"sched_cfs_perio","run_time_ns":70,"run_cnt":1}]"#;

    #[test]
    fn samples_and_deltas() {
        let a = parse_progs(PROGS).unwrap();
        let mut b = a.clone();
        b.get_mut(&504).unwrap().run_cnt = 30;
        b.get_mut(&504).unwrap().run_time_ns = 2700;
        b.insert(
            700,
            Prog {
                id: 700,
                name: "x".into(),
                kind: "kprobe".into(),
                run_cnt: 0,
                run_time_ns: 0,
            },
        );
        let d = delta(&a, &b, 504).unwrap();
        assert_eq!(
            d,
            Delta {
                hits: 20,
                run_ns: 2000
            }
        );
        assert_eq!(d.ns_per_hit(), 100.0);
        assert_eq!(new_ids(&a, &b), BTreeSet::from([700]));
        assert_eq!(delta(&a, &b, 700), None);
    }

    #[test]
    fn cfstrace_programs_by_name() {
        let a = cfstrace_attach("hrtimer_expire_entry_btf").unwrap();
        assert_eq!(a.to_string(), "tracepoint hrtimer_expire_entry");
        assert_eq!(
            cfstrace_attach("period_timer_fexit").unwrap().to_string(),
            "fexit sched_cfs_period_timer"
        );
        assert_eq!(
            cfstrace_attach("nr_running").unwrap().target,
            "sched_update_nr_running_tp"
        );
        assert_eq!(cfstrace_attach("BEGIN"), None);
    }

    #[test]
    fn peer_programs_from_perf_and_links() {
        let perf = r#"[{"pid":1,"fd":9,"prog_id":493,"fd_type":"tracepoint","tracepoint":"hrtimer_expire_entry"},
            {"pid":1,"fd":10,"prog_id":494,"fd_type":"kretprobe","func":"hrtimer_interrupt","offset":0}]"#;
        let links = r#"[{"id":3,"type":"tracing","prog_id":600,"attach_type":"trace_fexit","target_obj_id":1,"target_btf_id":2}]"#;
        let at = Attachments::parse(perf, links);
        let progs = parse_progs(PROGS).unwrap();
        assert_eq!(
            at.peer_attach(&progs[&493]).unwrap().to_string(),
            "tracepoint hrtimer_expire_entry"
        );
        assert_eq!(
            at.peer_attach(&progs[&600]).unwrap().to_string(),
            "fexit sched_cfs_period_timer"
        );
        let kret = Prog {
            id: 494,
            name: "hrtimer_interr".into(),
            kind: "kprobe".into(),
            run_cnt: 0,
            run_time_ns: 0,
        };
        assert_eq!(at.peer_attach(&kret).unwrap().style, Style::Kretprobe);
        assert_eq!(at.peer_attach(&progs[&504]), None);
        // bpftool output that is not JSON (an old bpftool, an error) is no attachment.
        assert!(
            Attachments::parse("", "oops")
                .peer_attach(&progs[&493])
                .is_none()
        );
    }
}
