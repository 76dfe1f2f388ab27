//! The co-firing storm: many cgroups with the same period, started together, whose period
//! timers must share timer interrupts ([`check_cofire`]).

use serde_json::Value;

use super::capture::{CaptureDigest, check_capture};
use super::consistency::consistency;
use super::facts::Facts;
use super::report::check_attach;
use super::{Verdict, at, int, list, show, text};

/// Period timers some timer interrupt of the co-firing storm must hold (the most in any one
/// span, whichever is longest) where timers of one period expire together (before 6.4; 120
/// cgroups, all started on one CPU, gave 97-115 in every interrupt on 6.1).
pub const COFIRE_MIN_TIMERS: u64 = 10;
/// Where the kernel interleaves them (6.4+): timers whose random phases fall close together
/// still share an interrupt (on 7.2 under TCG, 120 cgroups: mostly 1-4 a span, up to 42).
pub const COFIRE_MIN_TIMERS_INTERLEAVED: u64 = 2;

/// How many period timers the co-firing storm's fullest interrupt must hold on this kernel.
pub fn cofire_min_timers(facts: &Facts) -> u64 {
    if facts.interleaved_period_timers() {
        COFIRE_MIN_TIMERS_INTERLEAVED
    } else {
        COFIRE_MIN_TIMERS
    }
}

/// The co-firing storm: `cgroups` cgroups under `/<parent>/` with the same period, started
/// together. Their timers must share timer interrupts (at least [`cofire_min_timers`] in one
/// span, of as many distinct cgroups: any span, not the longest), every one of the cgroups'
/// timers must have run, the report's figures must follow its own arithmetic ([`consistency`])
/// and its capture ([`check_capture`]), and the irq_span probe must be attached as the facts say.
pub fn check_cofire(
    facts: &Facts,
    r: &Value,
    d: &CaptureDigest,
    parent: &str,
    cgroups: usize,
) -> Verdict {
    let mut v = Verdict::default();
    let min_timers = cofire_min_timers(facts);
    if facts.interleaved_period_timers() {
        v.notes.push(format!(
            "{} interleaves period timers (random phase per cgroup, 6.4+): they share an \
             interrupt only where their phases meet; want >= {min_timers} in one",
            facts.release
        ));
    }
    let available = check_attach(facts, "auto", r, &mut v);
    v.need(available.get("irq_span") == Some(&true), || {
        format!(
            "figures.irq_span is not available: {}",
            show(at(r, "/figures/irq_span"))
        )
    });
    v.failures.extend(consistency(r));
    v.absorb(check_capture(r, d));

    let prefix = format!("/{parent}/");
    let ours: Vec<&Value> = list(r, "/cgroups")
        .iter()
        .filter(|g| text(g, "/path").is_some_and(|p| p.starts_with(&prefix)))
        .collect();
    check_all_ran(&ours, &prefix, cgroups, &mut v);
    check_shared_spans(facts, r, d, min_timers, &mut v);
    check_every_cgroup_spanned(r, &ours, &mut v);
    v
}

/// Every one of the storm's cgroups ran its timer.
fn check_all_ran(ours: &[&Value], prefix: &str, cgroups: usize, v: &mut Verdict) {
    let periods: Vec<i64> = ours
        .iter()
        .filter_map(|g| int(g, "/periods"))
        .filter(|&p| p > 0)
        .collect();
    let ran = periods.len();
    v.need(ran >= cgroups, || {
        format!(
            "{ran} of the {cgroups} cgroups under {prefix} have period-timer callbacks in the \
             report ({} listed)",
            ours.len()
        )
    });
    let all: Vec<i64> = ours.iter().filter_map(|g| int(g, "/periods")).collect();
    v.notes.push(format!(
        "{ran} cgroups ran their timers, {}-{} callbacks each",
        all.iter().min().unwrap_or(&0),
        all.iter().max().unwrap_or(&0)
    ));
}

/// Many timers in one interrupt, from as many cgroups: judged by what the spans hold, never by
/// which span is longest. Which interrupt lasts longest is the emulation's choice: under TCG
/// one callback can stall for milliseconds (trixie once: cpu1's longest span, 8.06 ms, held
/// one timer of 6 us, cpu0's one callback of 5.5 ms, while spans of 13 timers existed), so the
/// longest span's timers are a note, not a check. What is judged is the most timers any span
/// held, in the report (`period_timers_per_span.max`) and in the capture's `irq_span` lines
/// (each CPU's figure is matched to the capture by `check_capture`), and the most distinct
/// cgroups whose callback lines name one span. Each is a maximum over every span of the run
/// (thousands: 120 timers x 10 periods a second for the whole record), not a draw of one:
/// before 6.4 all the timers armed on a CPU expire at the same instant every period (97-115 a
/// span on 6.1, the floor is 10); from 6.4 their phases are random but fixed per cgroup, 120
/// of them in a 100 ms period sit 0.8 ms apart on average, and a slow emulation only delays
/// the interrupt, which lets more expired timers into it (1-4 a span is usual, 13-42 the
/// most seen; the floor is 2). A tracer that loses the span, miscounts its timers or misses
/// its callbacks' span stamp fails them.
fn check_shared_spans(
    facts: &Facts,
    r: &Value,
    d: &CaptureDigest,
    min_timers: u64,
    v: &mut Verdict,
) {
    let most_per_span = list(r, "/cpus")
        .iter()
        .filter_map(|c| int(c, "/period_timers_per_span/max"))
        .max()
        .unwrap_or(0);
    let capture_most = d.spans.iter().map(|s| s.timers).max().unwrap_or(0);
    v.need(
        most_per_span >= min_timers as i64 && capture_most >= min_timers,
        || {
            format!(
                "the co-firing timers did not share interrupts: no span holds >= {min_timers} \
                 period timers on {} (the most in one span: {most_per_span} by the CPUs' \
                 period_timers_per_span.max, {capture_most} by the capture's irq_span lines)",
                facts.release
            )
        },
    );
    let most_cgroups = d
        .by_span
        .iter()
        .filter(|(k, _)| k.1 != 0)
        .map(|(_, e)| e.2)
        .max();
    v.need(most_cgroups.is_some_and(|m| m >= min_timers), || {
        format!(
            "the capture's spans hold callbacks of at most {most_cgroups:?} distinct cgroups, \
             want >= {min_timers}"
        )
    });
    let shared = d.spans.iter().filter(|s| s.timers >= 2).count();
    let longest = d.spans.iter().max_by_key(|s| s.duration_ns);
    v.notes.push(format!(
        "{shared} of {} timer interrupts with period timers held 2 or more, up to \
         {capture_most} ({} cgroups); the longest ({}) held {} (which span is longest is the \
         emulation's: not judged)",
        d.spans.len(),
        most_cgroups.unwrap_or(0),
        longest.map_or("-".into(), |s| format!(
            "{:.2} ms on cpu{}",
            s.duration_ns as f64 / 1e6,
            s.cpu
        )),
        longest.map_or(0, |s| s.timers)
    ));
}

/// Every callback ran in a span here (x86, hrtimers from the local APIC timer): then each
/// cgroup knows the longest span that held one of its callbacks. Structure, not timing: a
/// callback is recorded only once the tracer is armed, after every attach, and the attaches
/// after the span's entry (fentry or kprobe under auto) patch kernel text, which waits for
/// every CPU to take an IPI, i.e. to leave any interrupt that began before the entry was
/// live; however slow the emulation, no armed callback can run in an untraced interrupt.
/// Where the report has the spread figure, every cgroup with callbacks has a spread.
fn check_every_cgroup_spanned(r: &Value, ours: &[&Value], v: &mut Verdict) {
    let ran = || {
        ours.iter()
            .filter(|g| int(g, "/periods").is_some_and(|p| p > 0))
    };
    let periods_all = int(r, "/events/periods").unwrap_or(0);
    if int(r, "/events/periods_in_span") == Some(periods_all) {
        let without: Vec<&str> = ran()
            .filter(|g| at(g, "/worst_irq_span").is_none())
            .filter_map(|g| text(g, "/path"))
            .collect();
        v.need(without.is_empty(), || {
            let said = list(r, "/warnings")
                .iter()
                .filter_map(Value::as_str)
                .find(|w| w.contains("timer interrupt with more than"))
                .map(|w| format!(" (the report warns: {w:?})"))
                .unwrap_or_default();
            format!(
                "{} cgroup(s) ran every callback inside a traced span but have no \
                 worst_irq_span, so their headroom comes from a single callback, e.g. {:?}{said}",
                without.len(),
                without.iter().take(3).collect::<Vec<_>>()
            )
        });
    } else {
        v.failures.push(format!(
            "only {} of {periods_all} callbacks ran inside a traced timer interrupt",
            show(at(r, "/events/periods_in_span"))
        ));
    }
    if at(r, "/figures/spread/available") == Some(&Value::Bool(true)) {
        let without = ran().filter(|g| at(g, "/spread").is_none()).count();
        v.need(without == 0, || {
            format!(
                "{without} cgroup(s) have callbacks but no spread although figures.spread is \
                 available"
            )
        });
    }
}
