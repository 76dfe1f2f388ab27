//! `cfstrace doctor`: what this kernel offers, probe by probe, with the reason for each gap,
//! then the node judged (the `doctor` room): the known CFS-bandwidth fixes, the exposure now,
//! findings with severities, and an exit status that says the worst.
use std::collections::BTreeSet;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Result;
use serde_json::{Map, Value, json};

use crate::bpf::btf;
use crate::bpf::compat as probes;
use crate::bpf::kallsyms::Symbols;
use crate::bpf::leak_check;
use crate::bpf::loader::{Tracer, TracerOptions};
use crate::bpf::privileges;
use crate::cgroups;
use crate::cli::DoctorArgs;
use crate::doctor::{self, Exposure, Finding, FixState, KernelMarks, Severity, Walked, fixes};
use crate::model::host;
use crate::model::probe::{Probe, ProbeStatus};
use crate::render::stdout::Lines;
use crate::render::text::shared_reason_notes;

/// Width of the label that starts each line (`probe       `); wrapped lines are indented by it
/// so the first word of every line is still its label.
const LABEL_W: usize = 12;
/// The width doctor wraps to when stdout is not a terminal.
const PIPE_WIDTH: usize = 80;

/// Doctor's lines, wrapped to the terminal (80 columns into a pipe or a file), continuation
/// lines indented under the label.
struct Out {
    lines: Lines,
    width: usize,
    /// `--json`: the lines are not printed, the document is.
    quiet: bool,
}

impl Out {
    fn new(quiet: bool) -> Out {
        let width = std::io::IsTerminal::is_terminal(&std::io::stdout())
            .then(crossterm::terminal::size)
            .and_then(Result::ok)
            .map_or(PIPE_WIDTH, |(w, _)| usize::from(w))
            .max(LABEL_W + 20);
        Out {
            lines: Lines::default(),
            width,
            quiet,
        }
    }

    fn line(&mut self, args: std::fmt::Arguments<'_>) {
        if self.quiet {
            return;
        }
        // No colour here: the whole line is text, so names in it are escaped with it.
        let text = args.to_string();
        for l in wrap_line(&crate::model::escape::terminal(&text), self.width) {
            self.lines.line(format_args!("{l}"));
        }
    }
}

/// `text` in lines of at most `width` characters, the continuations indented by [`LABEL_W`].
fn wrap_line(text: &str, width: usize) -> Vec<String> {
    let indent = " ".repeat(LABEL_W);
    let opts = textwrap::Options::new(width).subsequent_indent(&indent);
    textwrap::wrap(text, opts)
        .into_iter()
        .map(|l| l.into_owned())
        .collect()
}

/// What the checks found, for the closing verdict line and the JSON.
#[derive(Debug, Default)]
struct Checked {
    /// Each check's outcome for the JSON: label -> {"ok": .., "error" or its details}.
    checks: Map<String, Value>,
    /// The checks that said NO, by label.
    failed: Vec<&'static str>,
    /// Each probe's state after attaching (empty when attaching was not reached).
    probes: Vec<(Probe, ProbeStatus)>,
    /// `--attach-cycles`: the leak check's verdict when it was not clean.
    leak: Option<&'static str>,
}

impl Checked {
    /// `ready — period-timer callbacks timed by fentry; unavailable: enqueue (reasons above)`
    /// or `cannot trace — privileges, btf failed (see above)`.
    fn verdict(&self) -> String {
        if !self.failed.is_empty() {
            return format!(
                "cannot trace — {} failed (see above)",
                self.failed.join(", ")
            );
        }
        if let Some(leak) = self.leak {
            return format!("not ready — leakcheck: {leak}");
        }
        let frame = self
            .probes
            .iter()
            .find(|(p, st)| *p == Probe::PeriodTimer && st.attached)
            .and_then(|(_, st)| st.how);
        let Some(how) = frame else {
            return "cannot trace — the period-timer callback could not be timed (see above)"
                .to_string();
        };
        let missing: Vec<&str> = self
            .probes
            .iter()
            .filter(|(_, st)| !st.attached)
            .map(|(p, _)| p.as_str())
            .collect();
        let mut v = format!("ready — period-timer callbacks timed by {}", how.as_str());
        if !missing.is_empty() {
            v.push_str(&format!(
                "; unavailable: {} (reasons above)",
                missing.join(", ")
            ));
        }
        v
    }
}

pub fn run(a: &DoctorArgs) -> Result<ExitCode> {
    doctor(&a.trace.options(), a.attach_cycles, a.sample, a.json)
}

fn doctor(
    opts: &TracerOptions,
    attach_cycles: Option<u32>,
    sample: Duration,
    json: bool,
) -> Result<ExitCode> {
    // A closed stdout (`doctor | head -1`) only stops the lines: the checks still decide the
    // exit status.
    let mut out = Out::new(json);
    let mut found = Checked::default();
    let host = host::host_facts();
    print_host(&mut out, &host);
    // Each check prints its lines; attaching needs the ones before it.
    let checks: [(&'static str, bool); 4] = [
        ("privileges", check_privileges(&mut out, &mut found)),
        ("cgroups", check_cgroups(&mut out, &mut found)),
        ("btf", check_btf(&mut out, opts, &mut found)),
        ("kallsyms", check_symbols(&mut out, &mut found)),
    ];
    found.failed = checks.iter().filter(|c| !c.1).map(|c| c.0).collect();
    let mut healthy = found.failed.is_empty();
    if healthy {
        healthy = check_attach(&mut out, opts, &mut found);
        if !healthy {
            found.failed.push("attach");
        }
    }
    if healthy && let Some(n) = attach_cycles {
        healthy = check_leaks(&mut out, opts, n, &mut found);
    }
    let judged = judge_node(opts, &host, sample);
    print_findings(&mut out, &judged);
    let verdict = found.verdict();
    out.line(format_args!("{:<LABEL_W$}{verdict}", "verdict"));
    let worst = doctor::worst(&judged.findings);
    // Cannot trace (1) wins: the findings still print, but the tool is not ready here.
    let status = if healthy { worst.exit_status() } else { 1 };
    out.line(format_args!(
        "{:<LABEL_W$}{} (exit {status})",
        "judgement",
        judgement(&judged.findings)
    ));
    if json {
        let doc = document(&host, &found, &judged, &verdict, healthy, worst, status);
        out.lines
            .line(format_args!("{}", serde_json::to_string_pretty(&doc)?));
    }
    out.lines.finish()?;
    Ok(ExitCode::from(status))
}

/// The node judged: the fixes, the exposure, the findings.
struct Judged {
    fixes: Vec<FixState>,
    exposure: Exposure,
    findings: Vec<Finding>,
}

/// Gather the kernel's marks and the cgroups' figures, then judge them.
fn judge_node(opts: &TracerOptions, host: &host::HostFacts, sample: Duration) -> Judged {
    let hierarchy = cgroups::find_cpu_hierarchy().ok();
    let symbols = Symbols::load(&fixes::SYMBOLS).ok().map(|s| {
        fixes::SYMBOLS
            .iter()
            .filter(|f| s.symbol(f).is_some())
            .map(|f| f.to_string())
            .collect::<BTreeSet<_>>()
    });
    let btf_fields = btf::btf_path(opts.btf.as_deref())
        .and_then(|p| btf::KernelBtf::read(&p))
        .ok()
        .map(|b| {
            fixes::FIELDS
                .iter()
                .filter(|(s, f)| b.has_member(s, f))
                .map(|(s, f)| format!("{s}.{f}"))
                .collect::<BTreeSet<_>>()
        });
    let marks = KernelMarks {
        release: host.kernel.clone(),
        symbols,
        btf_fields,
        burst_file: hierarchy.as_ref().and_then(doctor::gather::burst_file),
    };
    let fixes = doctor::decide(&marks);
    let walked = match &hierarchy {
        Some(h) => {
            let mut w = doctor::gather::walk(h, doctor::gather::WALK_CAP);
            doctor::gather::sample(h, &mut w, sample);
            w
        }
        None => Walked::default(),
    };
    let exposure = doctor::exposure(&walked, host.ncpus);
    let findings = doctor::judge(&fixes, &exposure, &host.watchdog);
    Judged {
        fixes,
        exposure,
        findings,
    }
}

fn print_findings(out: &mut Out, j: &Judged) {
    let e = &j.exposure;
    let ms = |us: Option<u64>| us.map_or("-".to_string(), |u| format!("{} ms", u as f64 / 1000.0));
    out.line(format_args!(
        "exposure    {} of {} cgroups walked have a quota{}; shortest period {}; quota depth {}; {} throttled in {} s; {} CPUs x {} sharing {} = {}",
        e.quota_cgroups,
        e.cgroups_walked,
        if e.walk_capped { " (walk cut at its cap)" } else { "" },
        ms(e.shortest_period_us),
        e.max_quota_depth,
        e.throttled_cgroups,
        e.sample_s,
        e.ncpus,
        e.throttled_sharing_period,
        ms(e.busiest_period_us),
        e.cpu_cgroup_work
    ));
    for f in &j.findings {
        out.line(format_args!(
            "finding     [{}] {}: {}; {} (basis: {})",
            f.severity.as_str(),
            f.id,
            f.title,
            f.evidence,
            f.basis
        ));
        if let Some(a) = &f.advice
            && f.severity >= Severity::Warn
        {
            out.line(format_args!("advice      {a}"));
        }
    }
}

/// `warn: 1 warn, 3 info, 9 ok`.
fn judgement(findings: &[Finding]) -> String {
    let worst = doctor::worst(findings);
    let counts: Vec<String> = [Severity::Risk, Severity::Warn, Severity::Info, Severity::Ok]
        .iter()
        .filter_map(|s| {
            let n = findings.iter().filter(|f| f.severity == *s).count();
            (n > 0).then(|| format!("{n} {}", s.as_str()))
        })
        .collect();
    format!("{}: {}", worst.as_str(), counts.join(", "))
}

/// The `cfstrace.doctor/1` document.
fn document(
    host: &host::HostFacts,
    found: &Checked,
    j: &Judged,
    verdict: &str,
    ready: bool,
    worst: Severity,
    status: u8,
) -> Value {
    let probes: Map<String, Value> = found
        .probes
        .iter()
        .map(|(p, st)| (p.as_str().to_string(), json!(st)))
        .collect();
    json!({
        "schema": "cfstrace.doctor/1",
        "tool_version": env!("CARGO_PKG_VERSION"),
        "host": host,
        "checks": found.checks,
        "probes": probes,
        "fixes": j.fixes,
        "exposure": j.exposure,
        "findings": j.findings,
        "verdict": {
            "ready": ready,
            "tracing": verdict,
            "worst": worst,
            "judgement": judgement(&j.findings),
            "exit_status": status,
        },
    })
}

/// A check's outcome line: `ok` prints `what`, an error prints `NO: error`.
fn outcome<T, E: std::fmt::Display>(
    out: &mut Out,
    label: &str,
    r: Result<T, E>,
    ok: impl FnOnce(&mut Out, T),
) -> bool {
    match r {
        Ok(v) => {
            ok(out, v);
            true
        }
        Err(e) => {
            out.line(format_args!("{label:<11} NO: {e}"));
            false
        }
    }
}

/// Note a check's outcome for the JSON: `{"ok": true, ...details}` or `{"ok": false, "error"}`.
fn note<T, E: std::fmt::Display>(
    found: &mut Checked,
    label: &str,
    r: &Result<T, E>,
    details: impl FnOnce(&T) -> Value,
) {
    let v = match r {
        Ok(v) => {
            let mut m = Map::new();
            m.insert("ok".into(), Value::Bool(true));
            if let Value::Object(d) = details(v) {
                m.extend(d);
            }
            Value::Object(m)
        }
        Err(e) => json!({"ok": false, "error": e.to_string()}),
    };
    found.checks.insert(label.into(), v);
}

fn print_host(out: &mut Out, h: &host::HostFacts) {
    out.line(format_args!("kernel      {} ({} CPUs)", h.kernel, h.ncpus));
    match h.watchdog.thresh_s {
        Some(t) => out.line(format_args!(
            "watchdog    thresh {t} s, {}",
            if h.watchdog.enabled {
                "enabled"
            } else {
                "disabled"
            }
        )),
        None => out.line(format_args!(
            "watchdog    /proc/sys/kernel/watchdog_thresh unreadable"
        )),
    }
}

fn check_privileges(out: &mut Out, found: &mut Checked) -> bool {
    let r = privileges::check();
    note(found, "privileges", &r, |_| json!({}));
    outcome(out, "privileges", r, |out, ()| {
        out.line(format_args!("privileges  ok"))
    })
}

fn check_cgroups(out: &mut Out, found: &mut Checked) -> bool {
    let r = cgroups::find_cpu_hierarchy();
    note(
        found,
        "cgroups",
        &r,
        |c| json!({"version": c.version, "mount": c.mount}),
    );
    outcome(out, "cgroups", r, |out, c| {
        out.line(format_args!(
            "cgroups     cpu controller on cgroup v{} at {}",
            c.version, c.mount
        ))
    })
}

fn check_btf(out: &mut Out, opts: &TracerOptions, found: &mut Checked) -> bool {
    let layout = btf::btf_path(opts.btf.as_deref())
        .and_then(|p| btf::KernelBtf::read(&p))
        .and_then(|b| b.layout());
    note(
        found,
        "btf",
        &layout,
        |l| json!({"path": l.source, "missing": l.missing}),
    );
    outcome(out, "btf", layout, |out, l| {
        out.line(format_args!("btf         {}", l.source.display()));
        if l.missing.is_empty() {
            out.line(format_args!("layout      all fields found"));
        } else {
            out.line(format_args!(
                "layout      missing: {}",
                l.missing.join(", ")
            ));
        }
    })
}

fn check_symbols(out: &mut Out, found: &mut Checked) -> bool {
    let fns = [
        probes::PERIOD_TIMER_FN,
        probes::DISTRIBUTE_FN,
        probes::UNTHROTTLE_FN,
        probes::ENQUEUE_ENTITY_FN,
        probes::ENQUEUE_TASK_FAIR_FN,
        probes::CSD_UNTHROTTLE_FN,
    ];
    let r = Symbols::load(&fns);
    note(found, "kallsyms", &r, |s| {
        let m: Map<String, Value> = fns
            .iter()
            .map(|f| (f.to_string(), json!(s.symbol(f).map(|x| x.to_string()))))
            .collect();
        json!({ "symbols": m })
    });
    outcome(out, "kallsyms", r, |out, s| {
        for f in fns {
            match s.symbol(f) {
                Some(sym) => out.line(format_args!("symbol      {f}: {sym}")),
                None => out.line(format_args!(
                    "symbol      {f}: not a symbol (inlined or absent)"
                )),
            }
        }
    })
}

fn check_attach(out: &mut Out, opts: &TracerOptions, found: &mut Checked) -> bool {
    let attached = Tracer::start(opts).and_then(|mut t| {
        let log = t.take_logger()?;
        Ok((t, log))
    });
    if let Err(e) = &attached {
        found.checks.insert(
            "attach".into(),
            json!({"ok": false, "error": e.to_string()}),
        );
    }
    outcome(out, "attach", attached, |out, (t, log)| {
        found.checks.insert(
            "attach".into(),
            json!({"ok": true, "frame": t.frame_backend.to_string()}),
        );
        out.line(format_args!("frame       {}", t.frame_backend));
        found.probes = t.probes.iter().map(|(p, st)| (*p, st.clone())).collect();
        // A reason several probes share (this host's "fentry: EPERM ...") is said once, as a
        // numbered note, without the system's own error text; `-v` says every one whole.
        let full = crate::verbosity::get().detail();
        let reasons: Vec<&str> = t
            .probes
            .values()
            .map(|st| st.reason.as_deref().unwrap_or("?"))
            .collect();
        let (said, notes) = if full {
            (reasons.iter().map(|r| r.to_string()).collect(), Vec::new())
        } else {
            shared_reason_notes(&reasons)
        };
        for ((name, st), reason) in t.probes.iter().zip(&said) {
            if st.attached {
                out.line(format_args!(
                    "probe       {name:<16} {} {}{}",
                    st.how.map_or("?", |h| h.as_str()),
                    st.target.as_deref().unwrap_or(""),
                    st.reason
                        .as_ref()
                        .map(|_| format!("  ({reason})"))
                        .unwrap_or_default()
                ));
            } else {
                out.line(format_args!("probe       {name:<16} unavailable: {reason}"));
            }
        }
        for (i, note) in notes.iter().enumerate() {
            out.line(format_args!("note        [{}] {note}", i + 1));
        }
        if said.iter().zip(&reasons).any(|(s, r)| s != r) {
            out.line(format_args!("note        -v: every reason in full"));
        }
        // `--log-level`: what the programs said while attached, once detached.
        drop(t);
        if let Some(mut log) = log {
            log.drain();
        }
    })
}

fn check_leaks(out: &mut Out, opts: &TracerOptions, cycles: u32, found: &mut Checked) -> bool {
    let mut clean = false;
    let r = leak_check::attach_cycles(opts, cycles);
    if let Err(e) = &r {
        found.checks.insert(
            "leakcheck".into(),
            json!({"ok": false, "error": e.to_string()}),
        );
    }
    let listed = outcome(out, "leakcheck", r, |out, r| {
        clean = !r.leaked() && r.saw_ours();
        found.checks.insert(
            "leakcheck".into(),
            json!({
                "ok": clean,
                "cycles": r.cycles,
                "leaked": r.leaked(),
                "saw_ours": r.saw_ours(),
                "programs": [r.before.programs, r.while_attached.programs, r.after.programs],
                "maps": [r.before.maps, r.while_attached.maps, r.after.maps],
                "links": [r.before.links, r.while_attached.links, r.after.links],
            }),
        );
        let verdict = if r.leaked() {
            "LEAK"
        } else if !r.saw_ours() {
            "CHECK BLIND (our objects were not visible while attached)"
        } else {
            "ok"
        };
        found.leak = (!clean).then_some(verdict);
        out.line(format_args!(
            "leakcheck   {} attach/detach cycles: programs {} -> {} (attached {}), maps {} -> {} (attached {}), links {} -> {} (attached {}): {verdict}",
            r.cycles,
            r.before.programs,
            r.after.programs,
            r.while_attached.programs,
            r.before.maps,
            r.after.maps,
            r.while_attached.maps,
            r.before.links,
            r.after.links,
            r.while_attached.links,
        ));
    });
    if !listed {
        found.failed.push("leakcheck");
    }
    listed && clean
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::probe::Style;

    #[test]
    fn long_lines_wrap_under_their_label() {
        let long = format!(
            "probe       unthrottle       unavailable: {}",
            "word ".repeat(30)
        );
        let lines = wrap_line(&long, 80);
        assert!(lines.len() > 1, "{lines:?}");
        assert!(lines.iter().all(|l| l.chars().count() <= 80), "{lines:?}");
        assert!(lines[0].starts_with("probe       unthrottle"));
        assert!(
            lines[1..]
                .iter()
                .all(|l| l.starts_with(&" ".repeat(LABEL_W)))
        );
    }

    #[test]
    fn verdicts() {
        let mut f = Checked::default();
        f.failed.push("btf");
        assert_eq!(f.verdict(), "cannot trace — btf failed (see above)");
        let mut f = Checked {
            probes: vec![
                (
                    Probe::PeriodTimer,
                    ProbeStatus::attached(Style::Fentry, "x"),
                ),
                (
                    Probe::Enqueue,
                    ProbeStatus::not_attached("no kprobes".to_string()),
                ),
            ],
            ..Checked::default()
        };
        assert_eq!(
            f.verdict(),
            "ready — period-timer callbacks timed by fentry; unavailable: enqueue (reasons above)"
        );
        f.leak = Some("LEAK");
        assert_eq!(f.verdict(), "not ready — leakcheck: LEAK");
    }
}
