//! `cfstrace storm`: a throttling storm of N cgroups x M busy workers, recorded by cfstrace
//! itself (one step, or a ramp of growing N, a capture a step), reported, and stopped at once
//! by the guard when a timer-interrupt span or a callback gets dangerous. `cfstrace demo` is a
//! preset of it: [`run_step`] is the one path both take, so both clean up alike.
use std::collections::HashMap;
use std::ops::ControlFlow;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, SystemTime};

use anyhow::{Context as _, Result};
use serde::Serialize;

use crate::analysis::distribution::Distribution;
use crate::bpf::loader::TracerOptions;
use crate::capture;
use crate::cgroups::storm::guard::{Guard, GuardLimits, Tripped};
use crate::cgroups::storm::{
    self, QuotaWrites, STORM_PREFIX, Storm, StormShape, StormSpec, storm_spec,
};
use crate::cgroups::{self as cg};
use crate::cli::{GuardArgs, StormArgs};
use crate::commands::record::{self, RecordOptions};
use crate::model::host;
use crate::model::probe::StopReason;
use crate::model::records::{CaptureLine, CpuHierarchy};
use crate::report::forecast::{StepPrediction, predict_step};
use crate::report::{self, HeadroomBasis, Report, human_ns};
use crate::session::signals::Stop;

/// Exit status when the guard stopped the storm.
pub const EXIT_GUARD: u8 = 7;

/// How long a fresh storm runs before tracing: every cgroup throttled, steady state.
const SETTLE: Duration = Duration::from_millis(500);

/// watchdog_thresh the guard assumes when the kernel's is unknown or 0 (the kernel default).
const DEFAULT_THRESH_S: u64 = 10;

pub async fn run(a: &StormArgs) -> Result<ExitCode> {
    // Caught before any storm starts: a Ctrl-C during set-up ends the run, and cleans up.
    let mut stop = Stop::catch().context("catching the stop signals")?;
    crate::bpf::privileges::check()?;
    let hierarchy = cg::find_cpu_hierarchy()?;
    remove_stale(&hierarchy, STORM_PREFIX, "cfstrace storm");
    let facts = host::host_facts();
    let period_us = a.period.as_micros() as u64;
    let quota_us = a.quota.us(period_us);
    let counts = match &a.ramp {
        Some(r) => r.0.clone(),
        None => vec![a.cgroups as usize],
    };
    let shape = StormShape {
        cgroups: counts[0],
        threads: a.threads as usize,
        period_us,
        quota_us,
        depth: a.depth as usize,
        writes: if a.stagger {
            QuotaWrites::Staggered
        } else {
            QuotaWrites::Aligned
        },
    };
    // Bad figures are refused before anything is made.
    storm::validate_spec(&storm_spec(&shape))?;
    let guard = guard_limits(&a.guard, facts.watchdog.thresh_s);
    let base = a
        .output
        .clone()
        .unwrap_or_else(|| default_capture_name(SystemTime::now()));
    let exe =
        std::env::current_exe().context("locating the cfstrace binary for the storm's workers")?;
    let ramp = a.ramp.is_some();
    let mut done: Vec<StepResult> = Vec::new();
    let mut stopped = None;
    for (i, &n) in counts.iter().enumerate() {
        let spec = storm_spec(&StormShape {
            cgroups: n,
            ..shape
        });
        let output = if ramp {
            step_path(&base, n)
        } else {
            base.clone()
        };
        let step = Step {
            hierarchy: &hierarchy,
            exe: &exe,
            tracer: a.trace.options(),
            duration: a.duration,
            guard,
            label: "cfstrace storm",
        };
        say_spec(&step, &spec, &hierarchy);
        let Some(result) = run_step(&step, &spec, &output, &mut stop).await? else {
            stopped = Some(Stopped::interrupted(i, n));
            break;
        };
        crate::info!(
            "cfstrace storm: step {} ({n} cgroups): capture {}",
            i + 1,
            output.display()
        );
        let end = result.end;
        let tripped = result.tripped.clone();
        done.push(result);
        if let Some(t) = tripped {
            stopped = Some(Stopped::guard(i, n, t, guard));
            break;
        }
        if end == StopReason::Interrupted {
            stopped = Some(Stopped::interrupted(i, n));
            break;
        }
    }
    let summary = Summary::new(&shape, &counts, a.duration, guard, &done, stopped.as_ref());
    if a.json {
        crate::render::stdout::print(&(serde_json::to_string_pretty(&summary)? + "\n"))?;
    } else if ramp {
        crate::render::stdout::print(&ramp_table(&summary))?;
    } else if let Some(s) = done.first() {
        crate::render::print_report(&s.report, false)?;
    }
    if let Some(s) = &stopped {
        eprintln!("cfstrace storm: {}", s.why);
    }
    Ok(match &stopped {
        Some(s) if s.reason == StopKind::Guard => ExitCode::from(EXIT_GUARD),
        _ => ExitCode::SUCCESS,
    })
}

/// The guard's limits, None with `--no-guard`.
pub fn guard_limits(a: &GuardArgs, thresh_s: Option<u64>) -> Option<GuardLimits> {
    if a.no_guard {
        eprintln!("cfstrace: --no-guard: nothing stops this storm short of a hard lockup");
        return None;
    }
    let thresh_s = match thresh_s {
        Some(t) if t > 0 => t,
        _ => {
            eprintln!(
                "cfstrace: watchdog_thresh unknown or 0: the guard takes the kernel's default, {DEFAULT_THRESH_S} s"
            );
            DEFAULT_THRESH_S
        }
    };
    Some(GuardLimits {
        pct: a.guard,
        thresh_s,
    })
}

/// Remove storms left by a run that was killed outright, saying so.
pub fn remove_stale(hierarchy: &CpuHierarchy, prefix: &str, label: &str) {
    let (stale, errors) = storm::remove_stale(hierarchy, prefix);
    for p in stale {
        crate::info!(
            "{label}: removed a storm left by a killed run: {}",
            p.display()
        );
    }
    for e in errors {
        eprintln!("{label}: warning: could not remove a stale storm: {e}");
    }
}

/// What one step runs with.
pub struct Step<'a> {
    pub hierarchy: &'a CpuHierarchy,
    /// cfstrace itself: the workers run its `__spin`.
    pub exe: &'a Path,
    pub tracer: TracerOptions,
    pub duration: Duration,
    pub guard: Option<GuardLimits>,
    /// `cfstrace storm`, `cfstrace demo`: how its stderr lines start.
    pub label: &'static str,
}

fn say_spec(step: &Step<'_>, spec: &StormSpec, h: &CpuHierarchy) {
    let c = &spec.cgroups[0];
    crate::info!(
        "{}: {} cgroups x {} workers under {}/{} (cgroup v{}), quota {} us of {} us, {} writes",
        step.label,
        spec.cgroups.len(),
        c.workers,
        h.mount,
        spec.tag,
        h.version,
        c.quota_us,
        c.period_us,
        match spec.writes {
            QuotaWrites::Aligned => "aligned",
            QuotaWrites::Staggered => "staggered",
        }
    );
}

/// One recorded step. The ramp keeps every step's whole report: later checks (a forecast of
/// the next step from the earlier ones) read it from here.
#[derive(Debug)]
pub struct StepResult {
    pub cgroups: usize,
    pub capture: PathBuf,
    pub end: StopReason,
    pub report: Report,
    pub figures: StepFigures,
    /// Why the guard stopped this step, if it did.
    pub tripped: Option<Tripped>,
}

/// A step's key figures, from its capture.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct StepFigures {
    pub callbacks: u64,
    pub lost: u64,
    pub callback_p50_ns: Option<u64>,
    pub callback_max_ns: Option<u64>,
    /// The worst timer-interrupt span (the worst callback where spans are not traced).
    pub worst_span_ns: Option<u64>,
    pub worst_span_cpu: Option<u32>,
    /// Period timers in that span (None when it is not a traced span).
    pub worst_span_timers: Option<u32>,
    /// Headroom as % of watchdog_thresh (the report's `headroom_alert.headroom_pct`).
    pub headroom_pct: Option<f64>,
}

/// Start the storm, let it settle, record it (the guard watching every line), stop it, and
/// read the capture back. None when a stop signal came before the recording started (the
/// storm is gone and no capture was written). The storm is removed on every path: its Drop
/// runs on errors, and its workers die with us (PDEATHSIG) if we are killed.
pub async fn run_step(
    step: &Step<'_>,
    spec: &StormSpec,
    output: &Path,
    stop: &mut Stop,
) -> Result<Option<StepResult>> {
    let mut storm = Storm::start(step.hierarchy, spec, step.exe)
        .with_context(|| format!("starting the storm under {}", spec.tag))?;
    tokio::select! {
        _ = tokio::time::sleep(SETTLE) => {}
        _ = stop.recv() => {
            storm.stop().context("removing the storm's cgroups")?;
            return Ok(None);
        }
    }
    let names: HashMap<u64, String> = storm
        .cgroup_paths()
        .iter()
        .filter_map(|p| Some((cg::id_of_path(step.hierarchy, p)?, p.clone())))
        .collect();
    let mut guard = step.guard.map(|l| Guard::new(l, names));
    let mut relaxed: Option<Result<(), storm::StormError>> = None;
    crate::info!(
        "{}: tracing for {} (Ctrl-C stops early and still cleans up)",
        step.label,
        humantime::format_duration(step.duration)
    );
    let rec = record::record_watched(
        &RecordOptions {
            tracer: step.tracer.clone(),
            duration: Some(step.duration),
            output: output.to_path_buf(),
            command: Vec::new(),
            progress: true,
        },
        stop,
        &mut |l: &CaptureLine| {
            let Some(g) = guard.as_mut() else {
                return ControlFlow::Continue(());
            };
            let flow = g.feed(l);
            // At once, from the drain that saw it: quotas lifted, workers killed.
            if flow.is_break() && relaxed.is_none() {
                relaxed = Some(storm.relax());
            }
            flow
        },
    )
    .await;
    // Stop the storm before reporting, whatever the recording did.
    let stopped = storm.stop();
    let rec = rec.with_context(|| format!("recording the storm to {}", output.display()))?;
    if let Some(r) = relaxed {
        r.context("lifting the storm's quotas")?;
    }
    stopped.context("removing the storm's cgroups")?;
    crate::info!(
        "{}: {} period-timer callbacks and {} async unthrottles traced, {} lost, stopped: {}; storm removed",
        step.label,
        rec.periods,
        rec.async_events,
        rec.lost,
        rec.reason.as_str().replace('_', " ")
    );
    let (report, figures) = read_step(output)?;
    Ok(Some(StepResult {
        cgroups: spec.cgroups.len(),
        capture: output.to_path_buf(),
        end: rec.reason,
        report,
        figures,
        tripped: guard.and_then(|g| g.tripped().cloned()),
    }))
}

/// The capture's report, and the figures of every callback on the node.
fn read_step(path: &Path) -> Result<(Report, StepFigures)> {
    let mut callbacks = Distribution::callback();
    let rep = report::report_replaying(|sink| {
        capture::replay(path, &mut |l| {
            sink(l);
            if let CaptureLine::Period(p) = l {
                callbacks.record(p.duration_ns);
            }
        })
    })
    .with_context(|| format!("reading {}", path.display()))?;
    let figures = figures_of(&rep, &callbacks);
    Ok((rep, figures))
}

fn figures_of(rep: &Report, callbacks: &Distribution) -> StepFigures {
    let some = callbacks.count() > 0;
    let worst = rep.worst_irqs_off.as_ref();
    StepFigures {
        callbacks: rep.events.periods,
        lost: rep.events.lost,
        callback_p50_ns: some.then(|| callbacks.quantile(0.5)),
        callback_max_ns: some.then(|| callbacks.max()),
        worst_span_ns: worst.map(|w| w.duration_ns),
        worst_span_cpu: worst.map(|w| w.cpu),
        worst_span_timers: worst
            .filter(|w| w.basis == HeadroomBasis::IrqSpan)
            .and_then(|w| w.period_timers),
        headroom_pct: rep.headroom_alert.as_ref().and_then(|a| a.headroom_pct),
    }
}

/// `cfstrace-storm-20260102T030405Z.jsonl`, in the current directory.
pub fn default_capture_name(now: SystemTime) -> PathBuf {
    super::repro::stamped_capture_name(STORM_PREFIX, now)
}

/// A ramp step's capture: `-nN` before the extension (`storm.jsonl` -> `storm-n8.jsonl`).
pub fn step_path(base: &Path, n: usize) -> PathBuf {
    let stem = base.file_stem().map(|s| s.to_string_lossy().into_owned());
    let name = match (stem, base.extension()) {
        (Some(stem), Some(ext)) => format!("{stem}-n{n}.{}", ext.to_string_lossy()),
        (Some(stem), None) => format!("{stem}-n{n}"),
        (None, _) => format!("storm-n{n}.jsonl"),
    };
    base.with_file_name(name)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum StopKind {
    Guard,
    Interrupted,
}

/// Why a storm stopped before its last step ended by itself.
#[derive(Debug, Clone, Serialize)]
pub struct Stopped {
    pub reason: StopKind,
    /// The step (0-based) and its cgroups.
    pub step: usize,
    pub cgroups: usize,
    /// What the guard saw.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub guard: Option<Tripped>,
    /// The same in a sentence (also on stderr).
    pub why: String,
}

impl Stopped {
    fn interrupted(step: usize, cgroups: usize) -> Stopped {
        Stopped {
            reason: StopKind::Interrupted,
            step,
            cgroups,
            guard: None,
            why: format!("interrupted at step {} ({cgroups} cgroups)", step + 1),
        }
    }

    fn guard(step: usize, cgroups: usize, t: Tripped, limits: Option<GuardLimits>) -> Stopped {
        Stopped {
            reason: StopKind::Guard,
            step,
            cgroups,
            why: format!(
                "GUARD STOPPED the storm at step {} ({cgroups} cgroups): {}",
                step + 1,
                guard_sentence(&t, limits)
            ),
            guard: Some(t),
        }
    }
}

/// What the guard saw, in words: the span or callback, its CPU, its cgroup, the threshold.
pub fn guard_sentence(t: &Tripped, limits: Option<GuardLimits>) -> String {
    let name = |id: Option<u64>, path: &Option<String>| match (path, id) {
        (Some(p), _) => p.clone(),
        (None, Some(id)) => format!("cgroup id {id}"),
        (None, None) => "a cgroup the kernel's totals do not name".into(),
    };
    match t {
        Tripped::IrqSpan {
            cpu,
            duration_ns,
            timers,
            cgroup_id,
            cgroup,
            limit_ns,
        } => format!(
            "a timer-interrupt span of {} on cpu{cpu} ({timers} period timer{}, mostly {}) passed \
             the guard's {} ({}); quotas lifted and workers killed at once",
            human_ns(*duration_ns),
            if *timers == 1 { "" } else { "s" },
            name(*cgroup_id, cgroup),
            human_ns(*limit_ns),
            limits.map_or_else(String::new, |l| format!(
                "{}% of watchdog_thresh {} s",
                l.pct, l.thresh_s
            )),
        ),
        Tripped::CallbackOverPeriod {
            cpu,
            duration_ns,
            period_ns,
            cgroup_id,
            cgroup,
        } => format!(
            "a period-timer callback of {} on cpu{cpu} for {} outlasted its period of {}; quotas \
             lifted and workers killed at once",
            human_ns(*duration_ns),
            name(Some(*cgroup_id), cgroup),
            human_ns(*period_ns)
        ),
    }
}

/// `cfstrace storm --json`: the `cfstrace.storm/1` summary.
#[derive(Debug, Serialize)]
pub struct Summary<'a> {
    pub schema: &'static str,
    pub spec: SpecSummary,
    pub steps: Vec<StepSummary<'a>>,
    pub stopped: Option<&'a Stopped>,
}

#[derive(Debug, Serialize)]
pub struct SpecSummary {
    /// The cgroup counts, one a step (one entry without --ramp).
    pub cgroups: Vec<usize>,
    pub threads: usize,
    pub period_us: u64,
    pub quota_us: u64,
    pub depth: usize,
    /// `aligned` or `staggered`.
    pub writes: &'static str,
    pub duration_s: f64,
    /// `{pct, thresh_s, span_limit_ns}`, null with --no-guard.
    pub guard: Option<GuardSummary>,
}

#[derive(Debug, Serialize)]
pub struct GuardSummary {
    pub pct: f64,
    pub thresh_s: u64,
    pub span_limit_ns: u64,
}

#[derive(Debug, Serialize)]
pub struct StepSummary<'a> {
    pub cgroups: usize,
    pub capture: &'a Path,
    /// The capture's end reason: `duration`, `interrupted` or `guard`.
    pub end: StopReason,
    #[serde(flatten)]
    pub figures: &'a StepFigures,
    /// From the third step on: the earlier steps' pooled interrupt fit against this step.
    pub forecast: Option<StepForecast>,
}

/// The forecast checked against a step: its mean interrupt span as predicted from the earlier
/// steps, and as measured; or why it could not be predicted.
#[derive(Debug, Serialize)]
#[serde(untagged)]
pub enum StepForecast {
    Checked(StepPrediction),
    Unavailable { why: String },
}

/// Fewest earlier steps a prediction is made from: one step holds too narrow a range of
/// timers per interrupt to fit a slope on.
const FORECAST_FROM_STEPS: usize = 2;

fn step_forecast(earlier: &[StepResult], step: &StepResult) -> Option<StepForecast> {
    if earlier.len() < FORECAST_FROM_STEPS {
        return None;
    }
    let span = |r: &StepResult| r.report.forecast.as_ref().map(|f| f.moments.span);
    let Some(this) = span(step) else {
        return Some(StepForecast::Unavailable {
            why: "the step's report has no forecast".into(),
        });
    };
    let before: Vec<_> = earlier.iter().filter_map(span).collect();
    let refs: Vec<_> = before.iter().collect();
    Some(match predict_step(&refs, &this) {
        Ok(p) => StepForecast::Checked(p),
        Err(e) => StepForecast::Unavailable {
            why: format!("interrupt time against period timers: {e}"),
        },
    })
}

impl<'a> Summary<'a> {
    fn new(
        shape: &StormShape,
        counts: &[usize],
        duration: Duration,
        guard: Option<GuardLimits>,
        done: &'a [StepResult],
        stopped: Option<&'a Stopped>,
    ) -> Summary<'a> {
        Summary {
            schema: "cfstrace.storm/1",
            spec: SpecSummary {
                cgroups: counts.to_vec(),
                threads: shape.threads,
                period_us: shape.period_us,
                quota_us: shape.quota_us,
                depth: shape.depth,
                writes: match shape.writes {
                    QuotaWrites::Aligned => "aligned",
                    QuotaWrites::Staggered => "staggered",
                },
                duration_s: duration.as_secs_f64(),
                guard: guard.map(|g| GuardSummary {
                    pct: g.pct,
                    thresh_s: g.thresh_s,
                    span_limit_ns: g.span_limit_ns(),
                }),
            },
            steps: done
                .iter()
                .enumerate()
                .map(|(i, s)| StepSummary {
                    cgroups: s.cgroups,
                    capture: &s.capture,
                    end: s.end,
                    figures: &s.figures,
                    forecast: step_forecast(&done[..i], s),
                })
                .collect(),
            stopped,
        }
    }
}

/// The ramp's table: a row a step.
fn ramp_table(s: &Summary<'_>) -> String {
    let ns = |v: Option<u64>| v.map_or_else(|| "-".into(), human_ns);
    let mut out = format!(
        "{:>7}  {:>9}  {:>8}  {:>8}  {:>10}  {:>6}  {:>10}  {:>22}  CAPTURE\n",
        "CGROUPS",
        "CALLBACKS",
        "CB p50",
        "CB max",
        "WORST SPAN",
        "TIMERS",
        "HEADROOM",
        "MEAN SPAN / PREDICTED"
    );
    for st in &s.steps {
        let f = st.figures;
        out.push_str(&format!(
            "{:>7}  {:>9}  {:>8}  {:>8}  {:>10}  {:>6}  {:>10}  {:>22}  {}{}\n",
            st.cgroups,
            f.callbacks,
            ns(f.callback_p50_ns),
            ns(f.callback_max_ns),
            ns(f.worst_span_ns),
            f.worst_span_timers
                .map_or_else(|| "-".into(), |t| t.to_string()),
            f.headroom_pct
                .map_or_else(|| "-".into(), |p| format!("{p:.4}%")),
            match &st.forecast {
                Some(StepForecast::Checked(p)) => format!(
                    "{} / {} ({:.0}%)",
                    human_ns(p.measured_ns.round() as u64),
                    human_ns(p.predicted_ns.max(0.0).round() as u64),
                    p.error_pct
                ),
                _ => "-".into(),
            },
            st.capture.display(),
            if st.end == StopReason::Guard {
                "  (guard)"
            } else {
                ""
            }
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::UNIX_EPOCH;

    #[test]
    fn capture_names() {
        let t = UNIX_EPOCH + Duration::from_secs(1_767_323_045);
        assert_eq!(
            default_capture_name(t),
            PathBuf::from("cfstrace-storm-20260102T030405Z.jsonl")
        );
        assert_eq!(
            step_path(Path::new("out/storm.jsonl"), 8),
            PathBuf::from("out/storm-n8.jsonl")
        );
        assert_eq!(
            step_path(Path::new("storm"), 16),
            PathBuf::from("storm-n16")
        );
        assert_eq!(
            step_path(Path::new("a.b/run.x.jsonl"), 2),
            PathBuf::from("a.b/run.x-n2.jsonl")
        );
    }

    #[test]
    fn guard_sentences_say_what_where_and_the_threshold() {
        let limits = GuardLimits {
            pct: 0.001,
            thresh_s: 10,
        };
        let span = Tripped::IrqSpan {
            cpu: 1,
            duration_ns: 150_000,
            timers: 12,
            cgroup_id: Some(7),
            cgroup: Some("/cfstrace-storm-1/cg0003".into()),
            limit_ns: limits.span_limit_ns(),
        };
        let s = guard_sentence(&span, Some(limits));
        assert!(s.contains("150 us on cpu1"), "{s}");
        assert!(s.contains("12 period timers"), "{s}");
        assert!(s.contains("/cfstrace-storm-1/cg0003"), "{s}");
        assert!(s.contains("100 us (0.001% of watchdog_thresh 10 s)"), "{s}");
        let cb = Tripped::CallbackOverPeriod {
            cpu: 0,
            duration_ns: 6_000_000,
            period_ns: 5_000_000,
            cgroup_id: 9,
            cgroup: None,
        };
        let s = guard_sentence(&cb, Some(limits));
        assert!(s.contains("6.00 ms on cpu0 for cgroup id 9"), "{s}");
        assert!(s.contains("period of 5.00 ms"), "{s}");
    }

    #[test]
    fn no_guard_and_unknown_thresh() {
        let on = GuardArgs {
            guard: 10.0,
            no_guard: false,
        };
        assert_eq!(
            guard_limits(&on, Some(20)),
            Some(GuardLimits {
                pct: 10.0,
                thresh_s: 20
            })
        );
        assert_eq!(guard_limits(&on, Some(0)).unwrap().thresh_s, 10);
        assert_eq!(guard_limits(&on, None).unwrap().thresh_s, 10);
        let off = GuardArgs {
            guard: 10.0,
            no_guard: true,
        };
        assert_eq!(guard_limits(&off, Some(10)), None);
    }
}
