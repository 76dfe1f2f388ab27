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
use crate::render::stdout::Lines;

pub fn run(a: &DoctorArgs) -> Result<ExitCode> {
    doctor(&a.trace.options(), a.attach_cycles)
}

fn doctor(opts: &TracerOptions, attach_cycles: Option<u32>) -> Result<ExitCode> {
    // A closed stdout (`doctor | head -1`) only stops the lines: the checks still decide the
    // exit status.
    let mut out = Lines::default();
    print_host(&mut out);
    // Each check prints its lines; attaching needs the ones before it.
    let mut healthy = [
        check_privileges(&mut out),
        check_cgroups(&mut out),
        check_btf(&mut out, opts),
        check_symbols(&mut out),
    ]
    .iter()
    .all(|ok| *ok);
    healthy = healthy && check_attach(&mut out, opts);
    if healthy && let Some(n) = attach_cycles {
        healthy = check_leaks(&mut out, opts, n);
    }
    out.finish()?;
    Ok(if healthy {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

/// A check's outcome line: `ok` prints `what`, an error prints `NO: error`.
fn outcome<T, E: std::fmt::Display>(
    out: &mut Lines,
    label: &str,
    r: Result<T, E>,
    ok: impl FnOnce(&mut Lines, T),
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

fn print_host(out: &mut Lines) {
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

fn check_privileges(out: &mut Lines) -> bool {
    outcome(out, "privileges", privileges::check(), |out, ()| {
        out.line(format_args!("privileges  ok"))
    })
}

fn check_cgroups(out: &mut Lines) -> bool {
    outcome(out, "cgroups", cgroups::find_cpu_hierarchy(), |out, c| {
        out.line(format_args!(
            "cgroups     cpu controller on cgroup v{} at {}",
            c.version, c.mount
        ))
    })
}

fn check_btf(out: &mut Lines, opts: &TracerOptions) -> bool {
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

fn check_symbols(out: &mut Lines) -> bool {
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

fn check_attach(out: &mut Lines, opts: &TracerOptions) -> bool {
    let attached = Tracer::start(opts).and_then(|mut t| {
        let log = t.take_logger()?;
        Ok((t, log))
    });
    outcome(out, "attach", attached, |out, (t, log)| {
        out.line(format_args!("frame       {}", t.frame_backend));
        for (name, st) in &t.probes {
            if st.attached {
                out.line(format_args!(
                    "probe       {name:<16} {} {}{}",
                    st.how.map_or("?", |h| h.as_str()),
                    st.target.as_deref().unwrap_or(""),
                    st.reason
                        .as_deref()
                        .map(|r| format!("  ({r})"))
                        .unwrap_or_default()
                ));
            } else {
                out.line(format_args!(
                    "probe       {name:<16} unavailable: {}",
                    st.reason.as_deref().unwrap_or("?")
                ));
            }
        }
        // `--log-level`: what the programs said while attached, once detached.
        drop(t);
        if let Some(mut log) = log {
            log.drain();
        }
    })
}

fn check_leaks(out: &mut Lines, opts: &TracerOptions, cycles: u32) -> bool {
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
    listed && clean
}
