//! What a cfstrace run can truly measure on a kernel, and the checks of its report against that.
//!
//! One oracle, used by the host test (`tests/tests/host.rs`) and by the VM matrix (`cargo xtask
//! vm`). It never trusts the tracer's own choice: it derives the attach style each probe should get
//! from facts read independently of cfstrace (kallsyms, `available_filter_functions`, the kprobe
//! PMU, BTF), then checks that `probes`, `figures`, the culprit's per-period figures and the
//! `cfstrace doctor` output agree with it. The one thing it takes from the tracer is a kernel's
//! explicit refusal (EPERM/EOPNOTSUPP on an attach attempt, as on the 6.18 CI host, whose fentry is
//! refused although the kernel has BPF trampolines): that is the kernel not offering a style.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::Path;

use serde_json::Value;

pub const PERIOD_TIMER_FN: &str = "sched_cfs_period_timer";
pub const DISTRIBUTE_FN: &str = "distribute_cfs_runtime";
pub const UNTHROTTLE_FN: &str = "unthrottle_cfs_rq";
pub const ENQUEUE_ENTITY_FN: &str = "enqueue_entity";
pub const ENQUEUE_TASK_FAIR_FN: &str = "enqueue_task_fair";
pub const CSD_UNTHROTTLE_FN: &str = "__cfsb_csd_unthrottle";
/// Functions whose presence decides the probes.
pub const FUNCTIONS: [&str; 6] = [
    PERIOD_TIMER_FN,
    DISTRIBUTE_FN,
    UNTHROTTLE_FN,
    ENQUEUE_ENTITY_FN,
    ENQUEUE_TASK_FAIR_FN,
    CSD_UNTHROTTLE_FN,
];
/// Raw tracepoints cfstrace can use (present when kallsyms has `__traceiter_<name>`, 5.10+, or
/// `__bpf_trace_<name>`; events of a class have only the class's `__bpf_trace_`).
pub const HRTIMER_TP: &str = "hrtimer_expire_entry";
pub const NR_RUNNING_TP: &str = "sched_update_nr_running_tp";
pub const CSD_TP: &str = "csd_function_entry";
pub const RAW_TPS: [&str; 3] = [HRTIMER_TP, NR_RUNNING_TP, CSD_TP];
/// Kernel functions BPF trampolines (fentry/fexit) attach through.
pub const DIRECT_CALL_FNS: [&str; 2] = ["register_ftrace_direct", "register_ftrace_direct_multi"];

/// The report's probes, in the order tables print them.
pub const PROBES: [&str; 6] = [
    "period_timer",
    "distribute",
    "unthrottle",
    "enqueue",
    "runnable",
    "async_unthrottle",
];
/// Figure -> the probe that provides it.
pub const FIGURES: [(&str, &str); 6] = [
    ("callback_ns", "period_timer"),
    ("loops", "distribute"),
    ("unthrottled", "unthrottle"),
    ("enqueued", "enqueue"),
    ("runnable", "runnable"),
    ("async_unthrottle", "async_unthrottle"),
];
pub const BACKENDS: [&str; 4] = ["auto", "kprobe", "fentry", "tracepoint"];

/// Facts about a kernel, gathered without cfstrace. As `key=value` pairs they cross the guest
/// console (the VM's /init prints them); [`Facts::host`] reads the same from this machine.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Facts {
    pub release: String,
    pub ncpus: u32,
    /// /sys/kernel/btf/vmlinux exists.
    pub btf: bool,
    /// /sys/bus/event_source/devices/kprobe exists (what cfstrace's kprobes attach through).
    pub kprobe_pmu: bool,
    /// kallsyms has register_ftrace_direct*, which BPF trampolines use.
    pub direct_calls: bool,
    /// Of [`FUNCTIONS`]: in /proc/kallsyms.
    pub symbols: BTreeSet<String>,
    /// Of [`FUNCTIONS`]: in tracing/available_filter_functions (fentry-able).
    pub ftrace: BTreeSet<String>,
    /// Of [`RAW_TPS`]: kallsyms has `__traceiter_<tp>` or `__bpf_trace_<tp>`.
    pub raw_tps: BTreeSet<String>,
}

fn yes(v: Option<&String>) -> bool {
    v.is_some_and(|v| v == "yes")
}

impl Facts {
    /// From `key=value` facts (the guest's `@@CFSTRACE-FACT key=value@@` lines).
    pub fn from_map(m: &BTreeMap<String, String>) -> Facts {
        let set = |prefix: &str, names: &[&str]| -> BTreeSet<String> {
            names
                .iter()
                .filter(|n| yes(m.get(&format!("{prefix}.{n}"))))
                .map(|n| n.to_string())
                .collect()
        };
        Facts {
            release: m.get("release").cloned().unwrap_or_default(),
            ncpus: m.get("ncpus").and_then(|n| n.parse().ok()).unwrap_or(0),
            btf: yes(m.get("btf")),
            kprobe_pmu: yes(m.get("kprobe_pmu")),
            direct_calls: yes(m.get("direct_calls")),
            symbols: set("symbol", &FUNCTIONS),
            ftrace: set("ftrace", &FUNCTIONS),
            raw_tps: set("raw_tp", &RAW_TPS),
        }
    }

    /// This machine's facts (needs root for kallsyms addresses? no: names are enough).
    pub fn host() -> Facts {
        let kallsyms = fs::read_to_string("/proc/kallsyms").unwrap_or_default();
        let mut names = BTreeSet::new();
        for l in kallsyms.lines() {
            let mut w = l.split_whitespace();
            if let (Some(_), Some(_), Some(name)) = (w.next(), w.next(), w.next()) {
                names.insert(name);
            }
        }
        let filter = ["/sys/kernel/tracing", "/sys/kernel/debug/tracing"]
            .iter()
            .find_map(|d| fs::read_to_string(Path::new(d).join("available_filter_functions")).ok())
            .unwrap_or_default();
        let ftrace_names: BTreeSet<&str> = filter
            .lines()
            .filter_map(|l| l.split_whitespace().next())
            .collect();
        let ncpus = fs::read_to_string("/proc/cpuinfo")
            .unwrap_or_default()
            .lines()
            .filter(|l| l.starts_with("processor"))
            .count() as u32;
        let release = fs::read_to_string("/proc/sys/kernel/osrelease")
            .unwrap_or_default()
            .trim()
            .to_string();
        Facts {
            release,
            ncpus,
            btf: Path::new("/sys/kernel/btf/vmlinux").exists(),
            kprobe_pmu: Path::new("/sys/bus/event_source/devices/kprobe").exists(),
            direct_calls: DIRECT_CALL_FNS.iter().any(|f| names.contains(f)),
            symbols: FUNCTIONS
                .iter()
                .filter(|f| names.contains(*f))
                .map(|f| f.to_string())
                .collect(),
            ftrace: FUNCTIONS
                .iter()
                .filter(|f| ftrace_names.contains(*f))
                .map(|f| f.to_string())
                .collect(),
            raw_tps: RAW_TPS
                .iter()
                .filter(|t| {
                    names.contains(format!("__traceiter_{t}").as_str())
                        || names.contains(format!("__bpf_trace_{t}").as_str())
                })
                .map(|t| t.to_string())
                .collect(),
        }
    }

    /// The function the `enqueue` probe counts on this kernel.
    pub fn enqueue_fn(&self) -> &'static str {
        if self.symbols.contains(ENQUEUE_ENTITY_FN) {
            ENQUEUE_ENTITY_FN
        } else {
            ENQUEUE_TASK_FAIR_FN
        }
    }

    /// Whether `style` can attach to `func` here, or why not.
    fn possible(&self, style: &str, func: &str) -> Result<(), String> {
        match style {
            "fentry" => {
                if !self.btf {
                    Err("no kernel BTF".into())
                } else if !self.direct_calls {
                    Err("no BPF trampolines (no register_ftrace_direct)".into())
                } else if !self.ftrace.contains(func) {
                    Err(format!("{func} is not in available_filter_functions"))
                } else {
                    Ok(())
                }
            }
            "kprobe" => {
                if !self.kprobe_pmu {
                    Err("no kprobe PMU (CONFIG_KPROBES off)".into())
                } else if !self.symbols.contains(func) {
                    Err(format!("{func} is not in kallsyms"))
                } else {
                    Ok(())
                }
            }
            // The period timer's and the CSD's tracepoint frames filter on the function's address.
            "tracepoint" => {
                let tp = if func == CSD_UNTHROTTLE_FN {
                    CSD_TP
                } else {
                    HRTIMER_TP
                };
                if !self.raw_tps.contains(tp) {
                    Err(format!("no raw tracepoint {tp}"))
                } else if !self.symbols.contains(func) {
                    Err(format!("{func} is not in kallsyms"))
                } else {
                    Ok(())
                }
            }
            "raw_tp" => {
                if self.raw_tps.contains(func) {
                    Ok(())
                } else {
                    Err(format!("no raw tracepoint {func}"))
                }
            }
            other => Err(format!("unknown style {other}")),
        }
    }
}

/// The part of a probe's `reason` about `style` (`fentry: ...; kprobe: ...`).
fn style_reason<'a>(reason: &'a str, style: &str) -> Option<&'a str> {
    let start = reason.find(&format!("{style}: "))? + style.len() + 2;
    let rest = &reason[start..];
    let end = ["; fentry: ", "; kprobe: ", "; tracepoint: "]
        .iter()
        .filter_map(|m| rest.find(m))
        .min()
        .unwrap_or(rest.len());
    Some(&rest[..end])
}

/// The kernel refused `style` outright (as opposed to cfstrace failing to use it): EPERM or
/// EOPNOTSUPP on an attach, or (raw tracepoints) ENOENT from `bpf_raw_tracepoint_open`, the
/// kernel saying it has no such raw tracepoint for BPF (5.10 has `sched_update_nr_running_tp`
/// but not for BPF).
pub fn kernel_refused(reason: Option<&str>, style: &str) -> bool {
    if style == "raw_tp" {
        return reason.is_some_and(|r| {
            r.contains("bpf_raw_tracepoint_open")
                && (r.contains("No such file") || r.contains("ENOENT"))
        });
    }
    let Some(r) = reason.and_then(|r| style_reason(r, style)) else {
        return false;
    };
    [
        "EPERM",
        "Operation not permitted",
        "EOPNOTSUPP",
        "ENOTSUPP",
        "not supported",
    ]
    .iter()
    .any(|w| r.contains(w))
}

/// What one probe should look like in a report.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Want {
    /// The style it must be attached with; None: it must be unattached, with a reason.
    pub style: Option<&'static str>,
    /// The target must contain this (function or tracepoint).
    pub target: String,
    /// Why better styles (or all) were not expected.
    pub why_not: Vec<String>,
}

/// The styles `backend` tries for `probe`, best first.
fn order(backend: &str, probe: &str) -> &'static [&'static str] {
    match (probe, backend) {
        ("runnable", _) => &["raw_tp"],
        ("period_timer" | "async_unthrottle", "auto") => &["fentry", "kprobe", "tracepoint"],
        ("period_timer" | "async_unthrottle", "kprobe") => &["kprobe"],
        ("period_timer" | "async_unthrottle", "fentry") => &["fentry"],
        ("period_timer" | "async_unthrottle", "tracepoint") => &["tracepoint"],
        (_, "auto") => &["fentry", "kprobe"],
        (_, "kprobe") => &["kprobe"],
        (_, "fentry") => &["fentry"],
        _ => &[],
    }
}

/// The probe's function (or raw tracepoint) on this kernel.
pub fn probe_fn(facts: &Facts, probe: &str) -> &'static str {
    match probe {
        "period_timer" => PERIOD_TIMER_FN,
        "distribute" => DISTRIBUTE_FN,
        "unthrottle" => UNTHROTTLE_FN,
        "enqueue" => facts.enqueue_fn(),
        "runnable" => NR_RUNNING_TP,
        "async_unthrottle" => CSD_UNTHROTTLE_FN,
        _ => "?",
    }
}

/// What `probe` should be with `backend` on a kernel with `facts`. `reason` is the probe's reason
/// in the report (only its explicit kernel refusals are taken into account).
pub fn want(facts: &Facts, backend: &str, probe: &str, reason: Option<&str>) -> Want {
    let func = probe_fn(facts, probe);
    let mut why_not = Vec::new();
    if probe == "async_unthrottle" && !facts.symbols.contains(CSD_UNTHROTTLE_FN) {
        why_not.push(format!("{CSD_UNTHROTTLE_FN} is not in kallsyms (pre-6.3)"));
        return Want {
            style: None,
            target: String::new(),
            why_not,
        };
    }
    let styles = order(backend, probe);
    if styles.is_empty() {
        why_not.push(format!("the {backend} backend has no {probe} probe"));
    }
    for &s in styles {
        match facts.possible(s, func) {
            Ok(()) if kernel_refused(reason, s) => {
                why_not.push(format!("{s}: refused by the kernel"))
            }
            Ok(()) => {
                let target = match s {
                    "tracepoint" if probe == "async_unthrottle" => CSD_TP.to_string(),
                    "tracepoint" => HRTIMER_TP.to_string(),
                    _ => func.to_string(),
                };
                return Want {
                    style: Some(s),
                    target,
                    why_not,
                };
            }
            Err(e) => why_not.push(format!("{s}: {e}")),
        }
    }
    Want {
        style: None,
        target: String::new(),
        why_not,
    }
}

/// How much each period of the culprit must count, on average, where the figure exists:
/// statistical floors (the VM harness's `FLOORS` says what was measured). Means, not medians: on
/// 6.3+ kernels with 2 CPUs the callback unthrottles its own CPU's cfs_rq and hands the other to
/// a CSD, so about half the periods count 0 in the callback and a median sits on the edge.
#[derive(Debug, Clone, Copy)]
pub struct Floors {
    /// `unthrottled_per_period.mean` (in the callback) at least.
    pub unthrottled_mean: f64,
    /// cfs_rqs unthrottled per period in all, in the callback plus asynchronously
    /// (`async_unthrottle.unthrottled / periods` where that figure exists), at least.
    pub unthrottled_total_mean: f64,
    /// `enqueued_per_period.mean` at least.
    pub enqueued_mean: f64,
    /// `runnable_per_period.mean` at least.
    pub runnable_mean: f64,
    /// `max_loops` at least.
    pub max_loops: f64,
    /// `async_unthrottle.csds / periods` (and `.unthrottled / periods`) at least, with 2+ CPUs.
    pub async_per_period: f64,
}

/// Everything found wrong, and notes (things not yet implemented in the tracer, say).
#[derive(Debug, Default, Clone)]
pub struct Verdict {
    pub failures: Vec<String>,
    pub notes: Vec<String>,
}

impl Verdict {
    fn need(&mut self, ok: bool, what: impl FnOnce() -> String) {
        if !ok {
            self.failures.push(what());
        }
    }
}

fn at<'a>(v: &'a Value, pointer: &str) -> Option<&'a Value> {
    v.pointer(pointer).filter(|x| !x.is_null())
}

fn num(v: &Value, pointer: &str) -> Option<f64> {
    at(v, pointer).and_then(Value::as_f64)
}

fn text<'a>(v: &'a Value, pointer: &str) -> Option<&'a str> {
    at(v, pointer).and_then(Value::as_str)
}

fn show(v: Option<&Value>) -> String {
    v.map_or("missing".into(), Value::to_string)
}

/// A probe as the report shows it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ProbeState {
    pub attached: bool,
    pub how: Option<String>,
    pub target: Option<String>,
    pub reason: Option<String>,
}

pub fn probe_state(report: &Value, probe: &str) -> Option<ProbeState> {
    let p = report.pointer(&format!("/probes/{probe}"))?;
    Some(ProbeState {
        attached: p.get("attached").and_then(Value::as_bool) == Some(true),
        how: text(p, "/how").map(str::to_string),
        target: text(p, "/target").map(str::to_string),
        reason: text(p, "/reason").map(str::to_string),
    })
}

/// What the expected culprit is.
#[derive(Debug, Clone)]
pub struct Culprit<'a> {
    pub path_suffix: &'a str,
    pub kind: &'a str,
    pub application: &'a str,
}

/// Check a `cfstrace report --json` document of a run with `backend` against the facts.
pub fn check_report(
    facts: &Facts,
    backend: &str,
    r: &Value,
    culprit: &Culprit,
    floors: &Floors,
) -> Verdict {
    let mut v = Verdict::default();
    v.need(text(r, "/schema") == Some("cfstrace.report/1"), || {
        format!("schema is {}", show(at(r, "/schema")))
    });
    if let Some(req) = text(r, "/backend_requested") {
        v.need(req == backend, || {
            format!("backend_requested is {req:?}, want {backend:?}")
        });
    }

    // Probes: each attached exactly as the facts allow, or unattached with a reason.
    let mut attached: BTreeMap<&str, bool> = BTreeMap::new();
    for probe in PROBES {
        let Some(st) = probe_state(r, probe) else {
            if probe == "async_unthrottle" {
                v.notes.push(
                    "probes.async_unthrottle is not in the report (not yet implemented in the \
                     tracer): not checked"
                        .into(),
                );
            } else {
                v.failures.push(format!("probes.{probe} is missing"));
            }
            continue;
        };
        let w = want(facts, backend, probe, st.reason.as_deref());
        attached.insert(probe, st.attached);
        match w.style {
            Some(style) => {
                let how_ok = st.how.as_deref() == Some(style);
                let target_ok = st.target.as_deref().is_some_and(|t| t.contains(&w.target));
                v.need(st.attached && how_ok && target_ok, || {
                    format!(
                        "probes.{probe}: want attached via {style} on {}{}, got {}",
                        w.target,
                        if w.why_not.is_empty() {
                            String::new()
                        } else {
                            format!(" ({})", w.why_not.join("; "))
                        },
                        describe(&st)
                    )
                });
            }
            None => {
                v.need(!st.attached, || {
                    format!(
                        "probes.{probe}: want unattached ({}), got {}",
                        w.why_not.join("; "),
                        describe(&st)
                    )
                });
                v.need(
                    st.attached || st.reason.as_deref().is_some_and(|r| !r.trim().is_empty()),
                    || format!("probes.{probe} is unattached without a reason"),
                );
            }
        }
    }
    if let Some(frame) = probe_state(r, "period_timer").and_then(|s| s.how) {
        v.need(text(r, "/backend") == Some(frame.as_str()), || {
            format!(
                "backend is {}, but probes.period_timer.how is {frame:?}",
                show(at(r, "/backend"))
            )
        });
    }

    let periods = num(r, "/events/periods").unwrap_or(0.0);
    v.need(periods > 0.0, || {
        format!(
            "events.periods is {}, want > 0",
            show(at(r, "/events/periods"))
        )
    });

    // Figures: available exactly where their probe is attached; otherwise a reason.
    let mut available: BTreeMap<&str, bool> = BTreeMap::new();
    for (fig, probe) in FIGURES {
        let Some(f) = r.pointer(&format!("/figures/{fig}")) else {
            if fig == "async_unthrottle" {
                v.notes.push(
                    "figures.async_unthrottle is not in the report (not yet implemented)".into(),
                );
            } else {
                v.failures.push(format!("figures.{fig} is missing"));
            }
            continue;
        };
        let avail = f.get("available").and_then(Value::as_bool) == Some(true);
        available.insert(fig, avail);
        if let Some(&att) = attached.get(probe) {
            v.need(avail == att, || {
                format!(
                    "figures.{fig}.available is {avail} but probes.{probe}.attached is {att}: {f}"
                )
            });
        }
        if !avail {
            v.need(
                text(f, "/reason").is_some_and(|r| !r.trim().is_empty()),
                || format!("figures.{fig} is unavailable without a reason"),
            );
        }
    }

    // The culprit: the container, named, with the figures this style can measure.
    let Some(c) = at(r, "/culprit") else {
        v.failures.push("culprit is null".into());
        return v;
    };
    let path = text(c, "/path").unwrap_or("");
    v.need(path.ends_with(culprit.path_suffix), || {
        format!("culprit.path is {path:?}, want .../{}", culprit.path_suffix)
    });
    v.need(text(c, "/workload/kind") == Some(culprit.kind), || {
        format!(
            "culprit.workload.kind is {}, want {:?}",
            show(at(c, "/workload/kind")),
            culprit.kind
        )
    });
    v.need(
        text(c, "/workload/application") == Some(culprit.application),
        || {
            format!(
                "culprit.workload.application is {}, want {:?}",
                show(at(c, "/workload/application")),
                culprit.application
            )
        },
    );
    let procs = at(c, "/processes")
        .and_then(Value::as_array)
        .map_or(0, Vec::len);
    v.need(procs > 0, || "culprit.processes is empty".into());
    let count = num(c, "/callback_ns/count").unwrap_or(0.0);
    let max = num(c, "/callback_ns/max").unwrap_or(0.0);
    v.need(count > 0.0 && max > 0.0, || {
        format!(
            "culprit.callback_ns is {}, want count > 0 and max > 0",
            show(at(c, "/callback_ns"))
        )
    });

    let periods = num(c, "/periods").unwrap_or(0.0).max(1.0);
    let async_unthrottled = match available.get("async_unthrottle") {
        Some(true) => num(c, "/async_unthrottle/unthrottled").unwrap_or(0.0),
        _ => 0.0,
    };
    for (fig, field, floor) in [
        (
            "unthrottled",
            "unthrottled_per_period",
            floors.unthrottled_mean,
        ),
        ("enqueued", "enqueued_per_period", floors.enqueued_mean),
        ("runnable", "runnable_per_period", floors.runnable_mean),
    ] {
        match available.get(fig) {
            Some(true) => {
                let mean = num(c, &format!("/{field}/mean"));
                v.need(mean.is_some_and(|m| m >= floor), || {
                    format!(
                        "culprit.{field}.mean is {}, want >= {floor} ({})",
                        mean.map_or("null".into(), |m| format!("{m:.2}")),
                        show(at(c, &format!("/{field}")))
                    )
                });
                if fig == "unthrottled"
                    && let Some(m) = mean
                {
                    let total = m + async_unthrottled / periods;
                    v.need(total >= floors.unthrottled_total_mean, || {
                        format!(
                            "cfs_rqs unthrottled per period in all (callback {m:.2} + async \
                             {async_unthrottled} / {periods} periods) is {total:.2}, want >= {}",
                            floors.unthrottled_total_mean
                        )
                    });
                }
            }
            Some(false) => v.need(at(c, &format!("/{field}")).is_none(), || {
                format!(
                    "culprit.{field} is {} although figures.{fig} is unavailable",
                    show(at(c, &format!("/{field}")))
                )
            }),
            None => {}
        }
    }
    match available.get("loops") {
        Some(true) => {
            let loops = num(c, "/max_loops");
            v.need(loops.is_some_and(|l| l >= floors.max_loops), || {
                format!(
                    "culprit.max_loops is {}, want >= {}",
                    show(at(c, "/max_loops")),
                    floors.max_loops
                )
            });
        }
        Some(false) => v.need(at(c, "/max_loops").is_none(), || {
            "culprit.max_loops is set although figures.loops is unavailable".into()
        }),
        None => {}
    }
    match available.get("async_unthrottle") {
        Some(true) if facts.ncpus >= 2 => {
            let csds = num(c, "/async_unthrottle/csds").unwrap_or(0.0);
            let want = floors.async_per_period * periods;
            v.need(csds >= want && async_unthrottled >= want, || {
                format!(
                    "culprit.async_unthrottle is {}, want csds and unthrottled >= {want:.0} \
                     ({} per period, {periods} periods) with {} CPUs",
                    show(at(c, "/async_unthrottle")),
                    floors.async_per_period,
                    facts.ncpus
                )
            });
        }
        Some(false) => v.need(at(c, "/async_unthrottle").is_none(), || {
            "culprit.async_unthrottle is set although figures.async_unthrottle is unavailable"
                .into()
        }),
        _ => {}
    }
    v
}

fn describe(st: &ProbeState) -> String {
    if st.attached {
        format!(
            "attached via {} on {}",
            st.how.as_deref().unwrap_or("?"),
            st.target.as_deref().unwrap_or("?")
        )
    } else {
        format!(
            "unattached: {}",
            st.reason.as_deref().unwrap_or("(no reason)")
        )
    }
}

/// What `cfstrace doctor --attach-cycles N` printed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Doctor {
    pub frame: Option<String>,
    /// probe -> Some(how) when attached, None when unavailable.
    pub probes: BTreeMap<String, Option<String>>,
    /// The `leakcheck` line, without the keyword.
    pub leakcheck: Option<String>,
    /// An `attach      NO: ...` line.
    pub attach_no: Option<String>,
}

impl Doctor {
    pub fn parse(text: &str) -> Doctor {
        let mut d = Doctor::default();
        for l in text.lines() {
            let l = l.trim_end();
            let mut w = l.split_whitespace();
            match w.next() {
                Some("frame") => d.frame = w.next().map(str::to_string),
                Some("probe") => {
                    if let (Some(name), Some(how)) = (w.next(), w.next()) {
                        let how = (how != "unavailable:").then(|| how.to_string());
                        d.probes.insert(name.to_string(), how);
                    }
                }
                Some("leakcheck") => {
                    d.leakcheck = Some(l.trim_start_matches("leakcheck").trim().to_string())
                }
                Some("attach") => {
                    d.attach_no = Some(l.trim_start_matches("attach").trim().to_string())
                }
                _ => {}
            }
        }
        d
    }

    /// Check doctor's exit status, the leak-check verdict and its agreement with the report of a
    /// run with the same backend on the same kernel.
    pub fn check(&self, rc: i64, cycles: u32, report: Option<&Value>) -> Vec<String> {
        let mut bad = Vec::new();
        if rc != 0 {
            bad.push(format!(
                "cfstrace doctor exited {rc}{}",
                self.attach_no
                    .as_deref()
                    .map(|a| format!(" (attach {a})"))
                    .unwrap_or_default()
            ));
        }
        match &self.leakcheck {
            None => bad.push("cfstrace doctor printed no leakcheck line".into()),
            Some(l) => {
                if !l.starts_with(&format!("{cycles} attach/detach cycles")) || !l.ends_with(": ok")
                {
                    bad.push(format!(
                        "leakcheck: {l} (want {cycles} cycles and \": ok\")"
                    ));
                }
            }
        }
        if let Some(r) = report {
            if self.frame.as_deref() != text(r, "/backend") {
                bad.push(format!(
                    "doctor's frame is {:?}, the report's backend {}",
                    self.frame,
                    show(at(r, "/backend"))
                ));
            }
            for (name, how) in &self.probes {
                if let Some(st) = probe_state(r, name) {
                    let report_how = st.how.filter(|_| st.attached);
                    if &report_how != how {
                        bad.push(format!(
                            "doctor says probe {name} {}, the report {}",
                            how.as_deref().unwrap_or("unavailable"),
                            report_how.as_deref().unwrap_or("unavailable")
                        ));
                    }
                }
            }
        }
        bad
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn facts_7x() -> Facts {
        let mut m = BTreeMap::new();
        for (k, v) in [
            ("release", "7.2.13+deb14-cloud-amd64"),
            ("ncpus", "2"),
            ("btf", "yes"),
            ("kprobe_pmu", "yes"),
            ("direct_calls", "yes"),
        ] {
            m.insert(k.to_string(), v.to_string());
        }
        for f in FUNCTIONS {
            let present = if f == ENQUEUE_ENTITY_FN { "no" } else { "yes" };
            m.insert(format!("symbol.{f}"), present.into());
            m.insert(format!("ftrace.{f}"), present.into());
        }
        for t in RAW_TPS {
            m.insert(format!("raw_tp.{t}"), "yes".into());
        }
        Facts::from_map(&m)
    }

    fn host_618() -> Facts {
        let mut f = facts_7x();
        f.kprobe_pmu = false;
        f.raw_tps.remove(CSD_TP);
        f
    }

    #[test]
    fn styles_per_backend() {
        let f = facts_7x();
        assert_eq!(want(&f, "auto", "period_timer", None).style, Some("fentry"));
        assert_eq!(want(&f, "kprobe", "distribute", None).style, Some("kprobe"));
        assert_eq!(want(&f, "tracepoint", "unthrottle", None).style, None);
        let enq = want(&f, "fentry", "enqueue", None);
        assert_eq!(
            (enq.style, enq.target.as_str()),
            (Some("fentry"), ENQUEUE_TASK_FAIR_FN)
        );
        let a = want(&f, "tracepoint", "async_unthrottle", None);
        assert_eq!((a.style, a.target.as_str()), (Some("tracepoint"), CSD_TP));
        assert_eq!(want(&f, "kprobe", "runnable", None).style, Some("raw_tp"));
        let mut old = f.clone();
        old.symbols.remove(CSD_UNTHROTTLE_FN);
        assert_eq!(want(&old, "auto", "async_unthrottle", None).style, None);
    }

    #[test]
    fn kernel_refusal_is_not_offering() {
        let f = host_618();
        let reason = "fell back: fentry: the kernel refused the program (EPERM: BPF trampolines \
                      not permitted here) [x]; kprobe: this kernel has no kprobe PMU";
        let w = want(&f, "auto", "period_timer", Some(reason));
        assert_eq!(w.style, Some("tracepoint"));
        // A failure that is not a refusal keeps fentry expected.
        let w = want(
            &f,
            "auto",
            "period_timer",
            Some("fell back: fentry: verifier said no; kprobe: x"),
        );
        assert_eq!(w.style, Some("fentry"));
        assert!(kernel_refused(
            Some("fentry: refused (EPERM); kprobe: nope"),
            "fentry"
        ));
        assert!(!kernel_refused(
            Some("fentry: E2BIG; kprobe: EPERM"),
            "fentry"
        ));
        let enoent = "raw_tp sched_update_nr_running_tp: `bpf_raw_tracepoint_open` failed: No \
                      such file or directory (os error 2)";
        assert!(kernel_refused(Some(enoent), "raw_tp"));
        assert_eq!(want(&f, "kprobe", "runnable", Some(enoent)).style, None);
    }

    fn report() -> Value {
        serde_json::json!({
            "schema": "cfstrace.report/1",
            "backend": "fentry",
            "backend_requested": "auto",
            "probes": {
                "period_timer": {"attached": true, "how": "fentry", "target": "sched_cfs_period_timer"},
                "distribute": {"attached": true, "how": "fentry", "target": "distribute_cfs_runtime"},
                "unthrottle": {"attached": true, "how": "fentry", "target": "unthrottle_cfs_rq"},
                "enqueue": {"attached": true, "how": "fentry", "target": "enqueue_task_fair"},
                "runnable": {"attached": true, "how": "raw_tp", "target": "sched_update_nr_running_tp"}
            },
            "events": {"periods": 800},
            "figures": {
                "callback_ns": {"available": true},
                "loops": {"available": true},
                "unthrottled": {"available": true},
                "enqueued": {"available": true},
                "runnable": {"available": true}
            },
            "culprit": {
                "path": "/storm/x/c1",
                "workload": {"kind": "yarn", "application": "app1"},
                "processes": [{"pid": 1, "comm": "sh"}],
                "periods": 800,
                "callback_ns": {"count": 800, "max": 5000},
                "unthrottled_per_period": {"p50": 1, "mean": 1.0},
                "enqueued_per_period": {"p50": 3, "mean": 1.6},
                "runnable_per_period": {"p50": 3, "mean": 1.1},
                "max_loops": 1
            }
        })
    }

    const C: Culprit = Culprit {
        path_suffix: "x/c1",
        kind: "yarn",
        application: "app1",
    };
    const F: Floors = Floors {
        unthrottled_mean: 0.2,
        unthrottled_total_mean: 0.6,
        enqueued_mean: 0.3,
        runnable_mean: 0.3,
        max_loops: 1.0,
        async_per_period: 0.15,
    };

    #[test]
    fn good_report_passes_without_async_yet() {
        let v = check_report(&facts_7x(), "auto", &report(), &C, &F);
        assert!(v.failures.is_empty(), "{:?}", v.failures);
        assert_eq!(v.notes.len(), 2, "{:?}", v.notes);
    }

    #[test]
    fn async_is_checked_once_present() {
        let mut r = report();
        r["probes"]["async_unthrottle"] = serde_json::json!({"attached": true, "how": "fentry", "target": "__cfsb_csd_unthrottle"});
        r["figures"]["async_unthrottle"] = serde_json::json!({"available": true});
        let v = check_report(&facts_7x(), "auto", &r, &C, &F);
        assert_eq!(v.failures.len(), 1, "{:?}", v.failures);
        // Too few CSDs for 800 periods.
        r["culprit"]["async_unthrottle"] = serde_json::json!({"csds": 50, "unthrottled": 50});
        let v = check_report(&facts_7x(), "auto", &r, &C, &F);
        assert_eq!(v.failures.len(), 1, "{:?}", v.failures);
        r["culprit"]["async_unthrottle"] = serde_json::json!({"csds": 400, "unthrottled": 400});
        let v = check_report(&facts_7x(), "auto", &r, &C, &F);
        assert!(
            v.failures.is_empty() && v.notes.is_empty(),
            "{:?} {:?}",
            v.failures,
            v.notes
        );
    }

    #[test]
    fn wrong_style_and_missing_figure_fail() {
        let mut r = report();
        r["probes"]["distribute"]["how"] = "kprobe".into();
        r["culprit"]["enqueued_per_period"] = Value::Null;
        r["figures"]["runnable"]["available"] = false.into();
        let v = check_report(&facts_7x(), "auto", &r, &C, &F);
        // distribute style; enqueued p50; runnable unavailable vs attached, without a reason,
        // and runnable_per_period set although unavailable.
        assert_eq!(v.failures.len(), 5, "{:#?}", v.failures);
    }

    #[test]
    fn doctor_output_parses_and_checks() {
        let text = "kernel      7.2\nframe       fentry\n\
                    probe       distribute       fentry distribute_cfs_runtime\n\
                    probe       unthrottle       unavailable: no\n\
                    leakcheck   20 attach/detach cycles: programs 3 -> 3 (attached 17), maps 1 -> 1 (attached 10), links 0 -> 0 (attached 8): ok\n";
        let d = Doctor::parse(text);
        assert_eq!(d.frame.as_deref(), Some("fentry"));
        assert_eq!(d.probes["distribute"].as_deref(), Some("fentry"));
        assert_eq!(d.probes["unthrottle"], None);
        let r = report();
        let bad = d.check(0, 20, Some(&r));
        assert_eq!(bad.len(), 1, "{bad:?}"); // unthrottle: doctor unavailable, report fentry
        assert_eq!(d.check(1, 10, None).len(), 2);
    }
}
