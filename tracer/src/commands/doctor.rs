//! `cfstrace doctor`: what this kernel offers, probe by probe, with the reason for each gap.
use std::process::ExitCode;

use anyhow::Result;

use crate::bpf::btf;
use crate::bpf::compat as probes;
use crate::bpf::kallsyms::Symbols;
use crate::bpf::leak_check;
use crate::bpf::loader::{Tracer, TracerOptions};
use crate::bpf::privileges;
use crate::cgroups;
use crate::cli::DoctorArgs;
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
}

impl Out {
    fn new() -> Out {
        let width = std::io::IsTerminal::is_terminal(&std::io::stdout())
            .then(crossterm::terminal::size)
            .and_then(Result::ok)
            .map_or(PIPE_WIDTH, |(w, _)| usize::from(w))
            .max(LABEL_W + 20);
        Out {
            lines: Lines::default(),
            width,
        }
    }

    fn line(&mut self, args: std::fmt::Arguments<'_>) {
        for l in wrap_line(&args.to_string(), self.width) {
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

/// What the checks found, for the closing verdict line.
#[derive(Debug, Default)]
struct Findings {
    /// The checks that said NO, by label.
    failed: Vec<&'static str>,
    /// Each probe's state after attaching (empty when attaching was not reached).
    probes: Vec<(Probe, ProbeStatus)>,
    /// `--attach-cycles`: the leak check's verdict when it was not clean.
    leak: Option<&'static str>,
}

impl Findings {
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
    doctor(&a.trace.options(), a.attach_cycles)
}

fn doctor(opts: &TracerOptions, attach_cycles: Option<u32>) -> Result<ExitCode> {
    // A closed stdout (`doctor | head -1`) only stops the lines: the checks still decide the
    // exit status.
    let mut out = Out::new();
    let mut found = Findings::default();
    print_host(&mut out);
    // Each check prints its lines; attaching needs the ones before it.
    let checks: [(&'static str, bool); 4] = [
        ("privileges", check_privileges(&mut out)),
        ("cgroups", check_cgroups(&mut out)),
        ("btf", check_btf(&mut out, opts)),
        ("kallsyms", check_symbols(&mut out)),
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
    out.line(format_args!("{:<LABEL_W$}{}", "verdict", found.verdict()));
    out.lines.finish()?;
    Ok(if healthy {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
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

fn print_host(out: &mut Out) {
    let h = host::host_facts();
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

fn check_privileges(out: &mut Out) -> bool {
    outcome(out, "privileges", privileges::check(), |out, ()| {
        out.line(format_args!("privileges  ok"))
    })
}

fn check_cgroups(out: &mut Out) -> bool {
    outcome(out, "cgroups", cgroups::find_cpu_hierarchy(), |out, c| {
        out.line(format_args!(
            "cgroups     cpu controller on cgroup v{} at {}",
            c.version, c.mount
        ))
    })
}

fn check_btf(out: &mut Out, opts: &TracerOptions) -> bool {
    let layout = btf::btf_path(opts.btf.as_deref())
        .and_then(|p| btf::KernelBtf::read(&p))
        .and_then(|b| b.layout());
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

fn check_symbols(out: &mut Out) -> bool {
    let fns = [
        probes::PERIOD_TIMER_FN,
        probes::DISTRIBUTE_FN,
        probes::UNTHROTTLE_FN,
        probes::ENQUEUE_ENTITY_FN,
        probes::ENQUEUE_TASK_FAIR_FN,
        probes::CSD_UNTHROTTLE_FN,
    ];
    outcome(out, "kallsyms", Symbols::load(&fns), |out, s| {
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

fn check_attach(out: &mut Out, opts: &TracerOptions, found: &mut Findings) -> bool {
    let attached = Tracer::start(opts).and_then(|mut t| {
        let log = t.take_logger()?;
        Ok((t, log))
    });
    outcome(out, "attach", attached, |out, (t, log)| {
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

fn check_leaks(out: &mut Out, opts: &TracerOptions, cycles: u32, found: &mut Findings) -> bool {
    let mut clean = false;
    let listed = outcome(
        out,
        "leakcheck",
        leak_check::attach_cycles(opts, cycles),
        |out, r| {
            clean = !r.leaked() && r.saw_ours();
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
        },
    );
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
        let mut f = Findings::default();
        f.failed.push("btf");
        assert_eq!(f.verdict(), "cannot trace — btf failed (see above)");
        let mut f = Findings {
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
            ..Findings::default()
        };
        assert_eq!(
            f.verdict(),
            "ready — period-timer callbacks timed by fentry; unavailable: enqueue (reasons above)"
        );
        f.leak = Some("LEAK");
        assert_eq!(f.verdict(), "not ready — leakcheck: LEAK");
    }
}
