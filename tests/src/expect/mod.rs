//! What a cfstrace run can truly measure on a kernel, and the checks of its report against that.
//!
//! One oracle, used by the host test (`tests/tests/host.rs`) and by the VM matrix (`cargo xtask
//! vm`). It never trusts the tracer's own choice: it derives the attach style each probe should get
//! from facts read independently of cfstrace (kallsyms, `available_filter_functions`, the kprobe
//! PMU, BTF), then checks that `probes`, `figures`, the culprit's per-period figures and the
//! `cfstrace doctor` output agree with it. The one thing it takes from the tracer is a kernel's
//! explicit refusal (EPERM/EOPNOTSUPP on an attach attempt, as on the 6.18 CI host, whose fentry is
//! refused although the kernel has BPF trampolines): that is the kernel not offering a style.
//!
//! - [`facts`]: what a kernel offers, read without cfstrace ([`Facts`]).
//! - [`want`]: what each probe should look like for a backend ([`want()`], [`probe_state`]).
//! - [`report`]: a report's probes, figures and culprit against the facts ([`check_report`]).
//! - [`consistency`]: a report's own arithmetic (spans, headroom, spread).
//! - [`capture`]: a report against the capture it was built from ([`check_capture`]).
//! - [`cofire`]: the co-firing storm of many cgroups ([`check_cofire`]).
//! - [`diff`]: `cfstrace diff`'s document against the two reports ([`check_diff_against_reports`]).
//! - [`doctor`]: `cfstrace doctor --attach-cycles N` ([`Doctor`]).
//! - [`findings`]: `cfstrace doctor --json`'s findings against facts ([`check_findings`]).
//! - [`storm`]: `cfstrace storm` ramps: the forecast and the guard ([`check_storm`]).
//!
//! Reports are read as JSON through pointers, never through the tracer's types: the oracle names
//! the keys it relies on itself.

pub mod capture;
pub mod cofire;
pub mod consistency;
pub mod diff;
pub mod doctor;
pub mod facts;
pub mod findings;
pub mod report;
pub mod storm;
pub mod want;

#[cfg(test)]
mod tests;

pub use capture::{CaptureDigest, SpanLine, check_capture};
pub use cofire::{
    COFIRE_MIN_TIMERS, COFIRE_MIN_TIMERS_INTERLEAVED, check_cofire, cofire_min_timers,
};
pub use consistency::{BASIS_CALLBACK, BASIS_CSD, BASIS_SPAN, consistency};
pub use diff::{check_diff, check_diff_against_reports, check_worst_span_fell};
pub use doctor::Doctor;
pub use facts::*;
pub use findings::{FindingsFacts, check_findings};
pub use report::{Culprit, Floors, check_attach, check_report};
pub use storm::{STORM_FORECAST_MAX_ERROR_PCT, check_storm};
pub use want::{
    Attempt, BACKENDS, FIGURES, PROBES, ProbeState, Want, kernel_refused, probe_fn, probe_state,
    want,
};

use serde_json::Value;

/// Everything found wrong, and notes (things not yet implemented in the tracer, say).
#[derive(Debug, Default, Clone)]
pub struct Verdict {
    pub failures: Vec<String>,
    pub notes: Vec<String>,
}

impl Verdict {
    /// A failure, `what`, unless `ok`.
    fn need(&mut self, ok: bool, what: impl FnOnce() -> String) {
        if !ok {
            self.failures.push(what());
        }
    }

    /// Another verdict's failures and notes, after this one's.
    fn absorb(&mut self, other: Verdict) {
        self.failures.extend(other.failures);
        self.notes.extend(other.notes);
    }
}

/// The value at `pointer`, None where it is missing or null.
fn at<'a>(v: &'a Value, pointer: &str) -> Option<&'a Value> {
    v.pointer(pointer).filter(|x| !x.is_null())
}

fn num(v: &Value, pointer: &str) -> Option<f64> {
    at(v, pointer).and_then(Value::as_f64)
}

fn int(v: &Value, pointer: &str) -> Option<i64> {
    at(v, pointer).and_then(Value::as_i64)
}

fn text<'a>(v: &'a Value, pointer: &str) -> Option<&'a str> {
    at(v, pointer).and_then(Value::as_str)
}

/// The array at `pointer`, empty where there is none.
fn list<'a>(v: &'a Value, pointer: &str) -> &'a [Value] {
    at(v, pointer)
        .and_then(Value::as_array)
        .map_or(&[], Vec::as_slice)
}

/// A value for a failure message.
fn show(v: Option<&Value>) -> String {
    v.map_or("missing".into(), Value::to_string)
}

/// Up to three of `items`, joined for a failure message.
fn first_three(items: &[String]) -> String {
    items.iter().take(3).cloned().collect::<Vec<_>>().join("; ")
}
