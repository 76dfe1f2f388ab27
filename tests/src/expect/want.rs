//! What each probe should look like in a report on a kernel: the attach style the facts allow
//! for a backend ([`want`]), told apart from what the report shows ([`probe_state`]). The one
//! thing taken from the report is a kernel's explicit refusal of a style ([`kernel_refused`]).

use serde_json::Value;

use super::facts::*;
use super::text;

/// The report's probes, in the order tables print them.
pub const PROBES: [&str; 7] = [
    "period_timer",
    "irq_span",
    "distribute",
    "unthrottle",
    "enqueue",
    "runnable",
    "async_unthrottle",
];
/// Figure -> the probe that provides it.
pub const FIGURES: [(&str, &str); 8] = [
    ("callback_ns", "period_timer"),
    ("irq_span", "irq_span"),
    ("loops", "distribute"),
    ("unthrottled", "unthrottle"),
    // Every kernel in the matrix has cfs_rq.h_nr_running (< 6.14) or h_nr_queued (6.14+).
    ("queued", "unthrottle"),
    ("enqueued", "enqueue"),
    ("runnable", "runnable"),
    ("async_unthrottle", "async_unthrottle"),
];
pub const BACKENDS: [&str; 4] = ["auto", "kprobe", "fentry", "tracepoint"];

/// One attach attempt the report lists for a probe (`probes.<name>.attempts`): the style tried,
/// where it stopped (`check`, `load`, `attach`) and the OS error the kernel gave.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Attempt {
    pub style: String,
    pub stage: String,
    pub errno: Option<i64>,
}

// The errnos that tell a refusal; EPERM and ENOENT also build the tests' attempts.
pub(super) const EPERM: i64 = 1;
pub(super) const ENOENT: i64 = 2;
const EOPNOTSUPP: i64 = 95;
const ENOTSUPP: i64 = 524;

/// The kernel refused `style` outright (as opposed to cfstrace failing to use it): EPERM or
/// EOPNOTSUPP loading or attaching, or (raw tracepoints) ENOENT from attaching, the kernel
/// saying it has no such raw tracepoint for BPF (5.10 has `sched_update_nr_running_tp` but
/// not for BPF). Read from the report's structured attempts, never from its prose.
pub fn kernel_refused(attempts: &[Attempt], style: &str) -> bool {
    attempts.iter().any(|a| {
        a.style == style
            && a.stage != "check"
            && match a.errno {
                Some(EPERM | EOPNOTSUPP | ENOTSUPP) => true,
                Some(ENOENT) => style == "raw_tp" && a.stage == "attach",
                _ => false,
            }
    })
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
        // The timer interrupt: the local_timer tracepoints first, also under auto (cheapest,
        // the whole interrupt, no live patching of its entry); kprobe on hrtimer_interrupt
        // where they are missing; never a trampoline (`--backend fentry` gets the tracepoints).
        ("irq_span", "auto") => &["tracepoint", "kprobe"],
        ("irq_span", "kprobe") => &["kprobe"],
        ("irq_span", "fentry" | "tracepoint") => &["tracepoint"],
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
        "enqueue" => facts.enqueue_fn(),
        "runnable" => NR_RUNNING_TP,
        _ => PROBE_FUNCTIONS
            .iter()
            .find(|(p, _)| *p == probe)
            .map_or("?", |(_, f)| f),
    }
}

/// What `probe` should be with `backend` on a kernel with `facts`. `attempts` are the probe's
/// attempts in the report (only the kernel's explicit refusals among them are taken into
/// account).
pub fn want(facts: &Facts, backend: &str, probe: &str, attempts: &[Attempt]) -> Want {
    let func = probe_fn(facts, probe);
    let mut why_not = Vec::new();
    if probe == "async_unthrottle" && !facts.symbol(CSD_UNTHROTTLE_FN) {
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
            Ok(()) if kernel_refused(attempts, s) => {
                why_not.push(format!("{s}: refused by the kernel"))
            }
            Ok(()) => {
                let target = match s {
                    "tracepoint" if probe == "async_unthrottle" => CSD_TP.to_string(),
                    "tracepoint" if probe == "irq_span" => LOCAL_TIMER_TP.to_string(),
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

/// A probe as the report shows it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ProbeState {
    pub attached: bool,
    pub how: Option<String>,
    pub target: Option<String>,
    pub reason: Option<String>,
    pub attempts: Vec<Attempt>,
}

/// `probes.<probe>` of a report, None where the report does not list it.
pub fn probe_state(report: &Value, probe: &str) -> Option<ProbeState> {
    let p = report.pointer(&format!("/probes/{probe}"))?;
    Some(ProbeState {
        attached: p.get("attached").and_then(Value::as_bool) == Some(true),
        how: text(p, "/how").map(str::to_string),
        target: text(p, "/target").map(str::to_string),
        reason: text(p, "/reason").map(str::to_string),
        attempts: p
            .get("attempts")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .map(|a| Attempt {
                style: text(a, "/style").unwrap_or_default().to_string(),
                stage: text(a, "/stage").unwrap_or_default().to_string(),
                errno: a.get("errno").and_then(Value::as_i64),
            })
            .collect(),
    })
}

impl ProbeState {
    /// For failure messages.
    pub(super) fn describe(&self) -> String {
        if self.attached {
            format!(
                "attached via {} on {}",
                self.how.as_deref().unwrap_or("?"),
                self.target.as_deref().unwrap_or("?")
            )
        } else {
            format!(
                "unattached: {}",
                self.reason.as_deref().unwrap_or("(no reason)")
            )
        }
    }
}
